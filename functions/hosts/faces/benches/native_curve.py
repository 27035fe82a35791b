#!/usr/bin/env python3
"""Cost curve of detection at native size, side by side with OpenCV (BENCHMARKS.md).

    .venv/bin/python functions/hosts/faces/benches/native_curve.py PHOTO...

Per photo, 1 thread, best of 2 after a warm-up: the function's recipe in Python onnxruntime
(repaired models, QDQ fusion off, no spinning; YuNet at the photo's size padded to 32, the
numpy decode of gen_opencv_reference.py at score 0.6, SFace as one batch) and OpenCV
(FaceDetectorYN at native size + FaceRecognizerSF per face). Run from the repository root."""
import time, sys, numpy as np, onnxruntime as ort, cv2
sys.path.insert(0,'tests/fixtures/faces')
import gen_opencv_reference as g
g.SCORE_THRESHOLD=0.6
cv2.setNumThreads(1)
o=ort.SessionOptions(); o.intra_op_num_threads=1; o.inter_op_num_threads=1; o.log_severity_level=3
o.add_session_config_entry("session.disable_quant_qdq","1"); o.add_session_config_entry("session.intra_op.allow_spinning","0")
det=ort.InferenceSession('.cache/models/yunet-2023mar-int8bq-ort/model.onnx',o,providers=["CPUExecutionProvider"])
rec=ort.InferenceSession('.cache/models/sface-2021dec-int8bq-ort/model.onnx',o,providers=["CPUExecutionProvider"])
names=[x.name for x in det.get_outputs()]
cvd=cv2.FaceDetectorYN.create('.cache/models/yunet-2023mar-int8bq/model.onnx','',(640,640),0.6,0.3,5000)
cvr=cv2.FaceRecognizerSF.create('.cache/models/sface-2021dec-int8bq/model.onnx','')
def ours(b):
    img=cv2.imdecode(np.frombuffer(b,np.uint8),cv2.IMREAD_COLOR); h,w=img.shape[:2]
    ph,pw=-(-h//32)*32,-(-w//32)*32
    x=np.zeros((1,3,ph,pw),np.float32); x[0,:,:h,:w]=img.transpose(2,0,1)
    rows=g.decode_yunet(dict(zip(names,det.run(None,{"input":x}))),pw,ph)
    if len(rows): rec.run(None,{"data":np.stack([cvr.alignCrop(img,r)[:,:,::-1].transpose(2,0,1) for r in rows]).astype(np.float32)})
    return len(rows)
def theirs(b):
    img=cv2.imdecode(np.frombuffer(b,np.uint8),cv2.IMREAD_COLOR)
    cvd.setInputSize((img.shape[1],img.shape[0])); _,f=cvd.detect(img)
    for r in ([] if f is None else f): cvr.feature(cvr.alignCrop(img,r))
    return 0 if f is None else len(f)
for p in sys.argv[1:]:
    b=open(p,'rb').read(); img=cv2.imdecode(np.frombuffer(b,np.uint8),cv2.IMREAD_COLOR)
    res=[]
    for fn in (ours,theirs):
        fn(b); ts=[]
        for _ in range(2):
            t0=time.perf_counter(); n=fn(b); ts.append((time.perf_counter()-t0)*1e3)
        res.append((min(ts),n))
    print(f"{p} {img.shape[1]}x{img.shape[0]} {img.shape[0]*img.shape[1]/1e6:.2f} MP: ort-python {res[0][0]:.0f} ms ({res[0][1]} faces), opencv native {res[1][0]:.0f} ms ({res[1][1]} faces)", flush=True)
