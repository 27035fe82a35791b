//! A moto server on 127.0.0.1, started for a test and stopped when dropped.
//!
//! moto speaks the real S3 and SQS wire protocols, so the AWS SDK clients under test run exactly
//! the requests they would send to AWS. Both services share the server's one port: use
//! [`MotoServer::s3_client`] and [`MotoServer::sqs_client`], and [`create_queue`] /
//! [`create_queue_with_dlq`] for SQS queues.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MotoServer {
    child: Child,
    pub endpoint: String,
}

impl MotoServer {
    /// Starts `moto_server` from the setup's virtualenv (`COLDPATH_PYTHON`) on a free port and
    /// waits until it accepts connections.
    pub fn start() -> MotoServer {
        let python = crate::setup_var("COLDPATH_PYTHON");
        // Ask the kernel for a free port; moto binds it right after. A clash is possible but
        // would show as a clear start-up failure below, not as a flaky assertion.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut child = Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto with {python}: {e}"));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("moto server exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto server did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        MotoServer {
            child,
            endpoint: format!("http://{addr}"),
        }
    }

    /// An S3 client for this server: path-style addressing, test credentials, one region.
    pub async fn s3_client(&self) -> aws_sdk_s3::Client {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "test", "test", None, None, "moto",
            ))
            .endpoint_url(&self.endpoint)
            .load()
            .await;
        let conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// The AWS configuration for this server: test credentials, one region, this endpoint for
    /// every service. Hand it to `ResultSink::from_env_with_sdk_config` or
    /// `Queue::from_env_with_sdk_config` to test the env-driven constructors without touching the
    /// process environment, which the tests in this binary share. (S3 clients built from it also
    /// need `COLDPATH_S3_FORCE_PATH_STYLE=true`: a bucket's host name under 127.0.0.1 does not
    /// resolve.)
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "moto",
            ))
            .endpoint_url(&self.endpoint)
            .load()
            .await
    }

    /// An SQS client for this server. moto serves SQS on the same port as S3, and the queue URLs
    /// it returns point back at this server.
    pub async fn sqs_client(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk_config().await)
    }
}

/// Creates the queue `name` and returns its URL. A name ending in `.fifo` makes a FIFO queue
/// with content-based deduplication off, so every sender must give a deduplication id (as
/// `ResultSink` and `Queue::send` do). `visibility_secs` is the queue's visibility timeout.
pub async fn create_queue(
    client: &aws_sdk_sqs::Client,
    name: &str,
    visibility_secs: i32,
) -> String {
    use aws_sdk_sqs::types::QueueAttributeName;
    let mut request = client.create_queue().queue_name(name).attributes(
        QueueAttributeName::VisibilityTimeout,
        visibility_secs.to_string(),
    );
    if name.ends_with(".fifo") {
        request = request
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::ContentBasedDeduplication, "false");
    }
    let out = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating queue {name}: {e:?}"));
    out.queue_url()
        .unwrap_or_else(|| panic!("moto returned no URL for queue {name}"))
        .to_string()
}

/// A queue's (visible, in flight) message counts: SQS's `ApproximateNumberOfMessages` and
/// `ApproximateNumberOfMessagesNotVisible`, exact on moto.
pub async fn queue_counts(client: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap_or_else(|e| panic!("reading the counts of {url}: {e:?}"));
    let attrs = out.attributes().expect("queue attributes");
    let get = |name| {
        attrs
            .get(&name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no count {name:?} for {url}"))
    };
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// A work queue and the dead-letter queue SQS moves its messages to once they have been
/// received `max_receive_count` times without being deleted.
#[derive(Debug, Clone)]
pub struct QueueWithDlq {
    pub url: String,
    pub dlq_url: String,
}

/// Creates `<name>-dlq` and `<name>` (for FIFO, `<base>-dlq.fifo` and `<base>.fifo`) with a
/// redrive policy to the DLQ after `max_receive_count` receives, and `visibility_secs` as the
/// work queue's visibility timeout. moto applies the redrive policy on receive, as SQS does.
pub async fn create_queue_with_dlq(
    client: &aws_sdk_sqs::Client,
    name: &str,
    max_receive_count: u32,
    visibility_secs: i32,
) -> QueueWithDlq {
    use aws_sdk_sqs::types::QueueAttributeName;
    let dlq_name = match name.strip_suffix(".fifo") {
        Some(base) => format!("{base}-dlq.fifo"),
        None => format!("{name}-dlq"),
    };
    let dlq_url = create_queue(client, &dlq_name, visibility_secs).await;
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap_or_else(|e| panic!("reading the ARN of {dlq_name}: {e:?}"))
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap_or_else(|| panic!("moto returned no ARN for {dlq_name}"));
    let url = create_queue(client, name, visibility_secs).await;
    let policy = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": max_receive_count.to_string(),
    });
    client
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("setting the redrive policy of {name}: {e:?}"));
    QueueWithDlq { url, dlq_url }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
