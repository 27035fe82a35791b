//! Chaos on delivery: several `captioning worker` processes share one queue on a moto server
//! while the test kills (SIGKILL) or stops (SIGTERM) one of them at random every second or two
//! and starts it again. A few percent of the messages are poison (a body that is not JSON, a
//! missing photo, a text file). At the end every good request has exactly one result, every
//! poison message is in the dead-letter queue exactly once, and the queue is empty: nothing lost,
//! nothing duplicated, nothing left hidden.
//!
//! `make test` runs a short soak (120 messages); `make soak` the full one (1000). Settings, all
//! optional: `COLDPATH_SOAK_MESSAGES`, `COLDPATH_SOAK_POISON_PERCENT` (3), `COLDPATH_SOAK_WORKERS`
//! (3), `COLDPATH_SOAK_SEED`, `COLDPATH_SOAK_TIMEOUT_SECS` (600). The summary goes to stderr
//! (`-- --nocapture` shows it). Model and photos as in `worker.rs`; batches pause 150 ms before
//! each model call (the `fault-injection` feature) so that kills land mid-batch.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use coldpath_aws::Queue;
use coldpath_test_support::moto::{MotoServer, create_queue_with_dlq, queue_counts as counts};
use coldpath_test_support::sigterm;

mod common;
use common::worker_command;
use serde_json::{Value, json};

/// Small xorshift generator: the chaos schedule is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn setting(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

struct Soak {
    moto: MotoServer,
    queue_url: String,
    results: PathBuf,
    logs: PathBuf,
    started: usize,
}

impl Soak {
    /// Starts one worker incarnation; its stderr (JSON lines) goes to a file of its own.
    fn spawn(&mut self) -> Child {
        self.started += 1;
        let log = File::create(self.logs.join(format!("worker-{}.log", self.started))).unwrap();
        worker_command(&self.queue_url, &self.moto.endpoint, &self.results)
            .env("CAPTIONING_MAX_BATCH", "4")
            .env("CAPTIONING_BULK_BATCH", "4")
            .env("CAPTIONING_BATCH_FILL_MS", "200")
            .env("CAPTIONING_VISIBILITY_TIMEOUT_SECS", "3")
            .env("CAPTIONING_STOP_DEADLINE_SECS", "2")
            .env("CAPTIONING_IDLE_EXIT_SECS", "0")
            .env("CAPTIONING_FAULT_BATCH_DELAY_MS", "150")
            .stderr(log)
            .spawn()
            .expect("start captioning worker")
    }
}

/// Waits up to `timeout` for `child` to exit.
fn wait(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Result files by request id; a file that does not parse or names another id is a failure.
fn results(dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("captioning")) else {
        return BTreeSet::new();
    };
    entries
        .map(|e| e.unwrap().path())
        // Only finished results: the sink writes a temporary file and renames it.
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let id = p.file_stem().unwrap().to_string_lossy().to_string();
            let doc: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            assert_eq!(doc["id"], json!(id), "{}", p.display());
            id
        })
        .collect()
}

#[test]
fn workers_killed_and_stopped_at_random_lose_and_duplicate_nothing() {
    let messages = setting("COLDPATH_SOAK_MESSAGES", 120) as usize;
    let poison_percent = setting("COLDPATH_SOAK_POISON_PERCENT", 3);
    let workers = setting("COLDPATH_SOAK_WORKERS", 3).max(1) as usize;
    let seed = setting("COLDPATH_SOAK_SEED", 20261201).max(1);
    let timeout = Duration::from_secs(setting("COLDPATH_SOAK_TIMEOUT_SECS", 600));
    let mut rng = Rng(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let moto = MotoServer::start();
    let client = rt.block_on(moto.sqs_client());
    // A message received 10 times without being deleted goes to the DLQ: poison gets there
    // quickly (handed back at once after each failure); a good message would need ten
    // interrupted batches in a row.
    let queues = rt.block_on(create_queue_with_dlq(&client, "soak", 10, 3));
    let queue = Queue::new(client.clone(), &queues.url);

    // The messages: good ones name a photo, poison ones fail in one of three ways.
    let photos = ["cat.jpg", "astronaut.jpg", "kafka.jpg", "grey.png"];
    let poison_bodies = [
        "{not json".to_string(),
        json!({"id": "x", "image": {"s3": "s3://photos/missing.jpg"}}).to_string(),
        json!({"id": "x", "image": {"s3": "s3://photos/not-a-photo.txt"}}).to_string(),
    ];
    let mut good_ids = BTreeSet::new();
    let mut poison_message_ids = BTreeSet::new();
    rt.block_on(async {
        // Poison is spread evenly (every `100 / percent`-th message), so even a short soak has some.
        let every = (100 / poison_percent.clamp(1, 100)) as usize;
        for i in 0..messages {
            if poison_percent > 0 && i % every == every / 2 {
                let mut body = poison_bodies[i % poison_bodies.len()].clone();
                body = body.replace("\"x\"", &format!("\"poison-{i}\""));
                poison_message_ids.insert(queue.send(&body).await.unwrap());
            } else {
                let id = format!("photo-{i}");
                let body = json!({"id": id, "image": {"s3": format!("s3://photos/{}", photos[i % photos.len()])}});
                queue.send(&body.to_string()).await.unwrap();
                good_ids.insert(id);
            }
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let mut soak = Soak {
        moto,
        queue_url: queues.url.clone(),
        results: dir.path().join("results"),
        logs: dir.path().join("logs"),
        started: 0,
    };
    std::fs::create_dir_all(&soak.logs).unwrap();
    let mut running: Vec<Child> = (0..workers).map(|_| soak.spawn()).collect();

    let begun = Instant::now();
    let (mut kills, mut terms, mut slow_terms) = (0u32, 0u32, Vec::new());
    loop {
        let pause = Duration::from_millis(800 + rng.below(1700));
        std::thread::sleep(pause);
        let done = results(&soak.results).len() == good_ids.len()
            && rt.block_on(counts(&client, &queues.url)) == (0, 0)
            && rt.block_on(counts(&client, &queues.dlq_url)).0 == poison_message_ids.len() as u64;
        if done {
            break;
        }
        assert!(
            begun.elapsed() < timeout,
            "soak not done after {timeout:?}: {} of {} results, queue {:?}, dlq {:?}; logs in {}",
            results(&soak.results).len(),
            good_ids.len(),
            rt.block_on(counts(&client, &queues.url)),
            rt.block_on(counts(&client, &queues.dlq_url)),
            soak.logs.display()
        );
        let w = rng.below(workers as u64) as usize;
        if rng.below(2) == 0 {
            running[w].kill().unwrap();
            running[w].wait().unwrap();
            kills += 1;
        } else {
            let at = Instant::now();
            sigterm(running[w].id());
            // 2 s stop deadline + 1 s long poll + hand-back calls.
            match wait(&mut running[w], Duration::from_secs(10)) {
                Some(status) => assert_eq!(status.code(), Some(0), "SIGTERM exit: {status}"),
                None => panic!("a worker ignored SIGTERM for 10 s"),
            }
            let took = at.elapsed();
            if took > Duration::from_secs(4) {
                slow_terms.push(took);
            }
            terms += 1;
        }
        running[w] = soak.spawn();
    }
    let wall = begun.elapsed();
    for child in &running {
        sigterm(child.id());
    }
    for child in &mut running {
        let status = wait(child, Duration::from_secs(10)).expect("exit after SIGTERM");
        assert_eq!(status.code(), Some(0));
    }

    // Exactly the good ids have results (one file per id: the sink keys results by id).
    let written = results(&soak.results);
    assert_eq!(written, good_ids, "results differ from the good requests");
    // The queue is empty and nothing is hidden.
    assert_eq!(rt.block_on(counts(&client, &queues.url)), (0, 0));
    // Exactly the poison messages are in the DLQ, each once.
    let dlq = Queue::new(client.clone(), &queues.dlq_url);
    let mut in_dlq: BTreeMap<String, u32> = BTreeMap::new();
    rt.block_on(async {
        loop {
            let got = dlq.receive(10, 0, Some(600)).await.unwrap();
            if got.is_empty() {
                break;
            }
            for m in got {
                *in_dlq.entry(m.message_id).or_default() += 1;
            }
        }
    });
    assert!(
        in_dlq.values().all(|&n| n == 1),
        "duplicates in the DLQ: {in_dlq:?}"
    );
    assert_eq!(
        in_dlq.keys().cloned().collect::<BTreeSet<_>>(),
        poison_message_ids,
        "the DLQ holds exactly the poison messages"
    );

    // What happened, from the workers' own logs.
    let (mut batches, mut redelivered, mut released, mut cut_off) = (0u64, 0u64, 0u64, 0u64);
    for entry in std::fs::read_dir(&soak.logs).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for v in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            match v["message"].as_str() {
                Some("batch started") => {
                    batches += 1;
                    redelivered += v["redelivered"].as_u64().unwrap_or(0);
                }
                Some("batch done") => {
                    released += v["released"].as_u64().unwrap_or(0);
                    cut_off += u64::from(v["cut_off"] == json!(true));
                }
                _ => {}
            }
        }
    }
    eprintln!(
        "soak: {messages} messages ({} good, {} poison), {workers} workers, seed {seed}: \
         {kills} SIGKILL + {terms} SIGTERM ({} incarnations), wall {:.1} s; \
         {batches} batches started, {redelivered} redeliveries, {released} handed back, \
         {cut_off} batches cut off at the stop deadline; {} results, {} in the DLQ, \
         SIGTERM exits over 4 s: {slow_terms:?}",
        good_ids.len(),
        poison_message_ids.len(),
        soak.started,
        wall.as_secs_f64(),
        written.len(),
        in_dlq.len(),
    );
    assert!(kills + terms > 0, "the soak ended before any chaos");
}
