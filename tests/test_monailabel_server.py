"""The real MONAI Label server (app/, started by diskrobust.serving.launch on 127.0.0.1) with the
bundle's shipped model, bundles/lumbar_disk_shape/models/model.pt ($DISKROBUST_SERVING_WEIGHTS points
at another one). MONAI Label comes from the project's `label` extra (scripts/install_label.sh).

One server for the module: automatic search on held-out phantom subjects (level names, Dice), "no
lumbar disks found" on noise, and the safety cases (traversal, CORS, oversized request and image,
bad params, temporary files, /info/ answering during an inference, concurrent requests).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from diskrobust.data.contours import contour_centroid, dice
from diskrobust.data.dataset_io import write_image_nifti
from diskrobust.data.phantom import PhantomConfig, generate_subject

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = Path(os.environ.get("DISKROBUST_SERVING_WEIGHTS", REPO / "bundles" / "lumbar_disk_shape" / "models" / "model.pt"))
HELD_OUT_SEEDS = (1000, 1001)  # the bundle's phantom uses seeds 0..phantom_subjects-1
START_TIMEOUT_S = 240
MIN_DICE = 0.85
LUMBAR = ["L5/S1", "L4/L5", "L3/L4", "L2/L3", "L1/L2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method, url, fields=None, files=None, headers=None, timeout=300.0):
    data, hdrs = None, dict(headers or {})
    if fields or files:
        boundary = uuid.uuid4().hex
        chunks = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                  for k, v in (fields or {}).items()]
        for name, (filename, payload) in (files or {}).items():
            chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                          f"Content-Type: application/octet-stream\r\n\r\n".encode() + payload + b"\r\n")
        chunks.append(f"--{boundary}--\r\n".encode())
        data = b"".join(chunks)
        hdrs["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _nifti_bytes(image: np.ndarray, affine: np.ndarray, tmp: Path) -> bytes:
    path = tmp / f"{uuid.uuid4().hex}.nii.gz"
    if image.ndim == 2:
        write_image_nifti(path, image, affine)
    else:
        nib.save(nib.Nifti1Image(image, affine), str(path))
    return path.read_bytes()


def _upload_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("diskrobust-upload-")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not WEIGHTS.is_file():
        pytest.fail(f"{WEIGHTS.relative_to(REPO) if WEIGHTS.is_relative_to(REPO) else WEIGHTS} is missing: the bundle "
                    "ships its model (bundles/lumbar_disk_shape/docs/README.md says how to train one)")
    root = tmp_path_factory.mktemp("ml")
    studies = root / "studies"
    studies.mkdir()
    port = _free_port()
    cmd = [sys.executable, "-m", "diskrobust.serving.launch", "--studies", str(studies), "--port", str(port),
           "--conf", "weights", str(WEIGHTS), "--conf", "max_request_mb", "8"]
    log_path = root / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(root), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if _http("GET", f"{base}/info/", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            if time.time() > deadline:
                pytest.fail(f"no /info/ within {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1.0)
        yield {"base": base, "root": root, "studies": studies, "port": port}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def subjects(server):
    """Held-out phantom subjects uploaded into the datastore: {id: subject}."""
    out = {}
    for seed in HELD_OUT_SEEDS:
        subject = generate_subject(seed, PhantomConfig())
        image_id = f"sub-{seed}"
        status, _, body = _http("PUT", f"{server['base']}/datastore/image?image={image_id}", fields={"params": "{}"},
                                files={"file": (f"{image_id}.nii.gz", _nifti_bytes(subject.image, subject.affine, server["root"]))})
        assert status == 200, body[:300]
        out[image_id] = subject
    return out


def _infer_all(base, image_id, params=None, model="disk_shape"):
    from email.parser import BytesParser
    from email.policy import HTTP

    status, headers, body = _http("POST", f"{base}/infer/{model}?image={image_id}&output=all",
                                  fields={"params": json.dumps(params or {})})
    assert status == 200, body[:500]
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + body)
    parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
    import gzip

    raw = parts["image"].get_payload(decode=True)
    label = nib.Nifti1Image.from_bytes(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    return json.loads(parts["params"].get_payload(decode=True)), np.asarray(label.dataobj)


def test_automatic_search_names_the_lumbar_disks_and_outlines_them(server, subjects):
    scores = []
    for image_id, subject in subjects.items():
        result, label = _infer_all(server["base"], image_id)
        assert result["disk_search"] == "automatic"
        levels = [d["level"] for d in result["disks"]]
        assert levels[:5] == LUMBAR, (image_id, levels)
        for d in result["disks"][:5]:
            assert not d["doubtful"], (image_id, d["level"], d["flags"])
            if "found_by" in d:
                print(image_id, d["level"], "found by", d["found_by"])
            scores.append(dice(label == d["label"], subject.label == d["label"]))
    # The bar: Dice >= 0.85 per disk. The shipped model (trained on phantom v2) reached 0.889-0.965
    # on these 10 disks (measured 2026-12-02); a wrong disk or a misplaced centre falls far below.
    print("per-disk Dice", np.round(scores, 3))
    assert min(scores) >= 0.85, np.round(scores, 3)


def test_clicked_disks_are_outlined_and_named_from_the_bottom_up(server, subjects):
    """Clicks a few px off the five lumbar disks, given top first: named L5/S1 .. L1/L2 from the sacrum."""
    image_id, subject = next(iter(subjects.items()))
    clicks = [contour_centroid(np.asarray(d["points_px"])) + [3.0, -2.0] for d in subject.disks[:5]][::-1]
    result, label = _infer_all(server["base"], image_id, {"foreground": [c.tolist() for c in clicks]})
    assert result["disk_search"] == "given"
    assert [d["level"] for d in result["disks"]] == LUMBAR
    for d in result["disks"]:
        assert dice(label == d["label"], subject.label == d["label"]) >= 0.78, d["level"]


def test_noise_and_a_photograph_have_no_lumbar_disks(server):
    from skimage import data

    from diskrobust.data.dataset_io import sagittal_affine

    rng = np.random.default_rng(0)
    for name, image, affine in [("noise", rng.random((16, 256, 256)).astype(np.float32), np.diag([0.6, 0.6, 0.6, 1.0])),
                                ("camera", data.camera().astype(np.float32), sagittal_affine((0.6, 0.6)))]:
        status, _, body = _http("POST", f"{server['base']}/infer/disk_shape?output=json", fields={"params": "{}"},
                                files={"file": (f"{name}.nii.gz", _nifti_bytes(image, affine, server["root"]))})
        assert status == 200, body[:300]
        result = json.loads(body)
        assert result["disks"] == [] and result["message"] == "no lumbar disks found", (name, result["message"])


def test_traversal_ids_and_tags_are_refused_and_write_nothing_outside(server, subjects):
    base, root = server["base"], server["root"]
    before = set(os.listdir(root)) | set(os.listdir(root.parent))
    payload = _nifti_bytes(np.ones((64, 64), np.float32), np.diag([0.6, 0.6, 1.0, 1.0]), root)
    for url in [f"{base}/datastore/image?image=..%2Fpwn", f"{base}/datastore/image?image=%2Ftmp%2Fpwn",
                f"{base}/datastore/image?image=..", f"{base}/datastore/?image=a%2Fb"]:
        status, _, body = _http("PUT", url, fields={"params": "{}"}, files={"file": ("x.nii.gz", payload)})
        assert status == 400 and b"not allowed" in body, (url, status, body[:200])
    status, _, _ = _http("PUT", f"{base}/datastore/image", fields={"params": "{}"}, files={"file": ("...nii.gz", payload)})
    assert status == 400
    image_id = next(iter(subjects))
    status, _, body = _http("PUT", f"{base}/datastore/label?image={image_id}&tag=..%2F..%2Fpwn",
                            fields={"params": "{}"}, files={"label": ("l.nii.gz", payload)})
    assert status == 400, body[:200]
    status, _, _ = _http("POST", f"{base}/infer/disk_shape?image=%2Fetc%2Fhostname", fields={"params": "{}"})
    assert status == 400
    status, _, _ = _http("GET", f"{base}/datastore/image?image=..%2F..%2Fetc%2Fhostname")
    assert status == 400
    after = set(os.listdir(root)) | set(os.listdir(root.parent))
    assert after - before <= {p for p in after if p.endswith(".nii.gz")}  # only this test's own payload files
    assert not any("pwn" in p for p in after)
    assert sorted(os.listdir(server["studies"])) == sorted(os.listdir(server["studies"]))  # readable, nothing odd
    assert not any("pwn" in str(p) for p in server["studies"].rglob("*"))


def test_cors_only_for_loopback_origins_and_other_endpoints_closed(server):
    base = server["base"]
    status, _, _ = _http("GET", f"{base}/info/", headers={"Origin": "https://evil.example"})
    assert status == 403
    status, headers, _ = _http("GET", f"{base}/info/", headers={"Origin": f"http://127.0.0.1:{server['port']}"})
    assert status == 200 and headers.get("access-control-allow-origin")
    for path in ("/logs/", "/model/disk_shape", "/train/"):
        assert _http("GET", base + path)[0] == 404


def test_oversized_request_and_image_are_refused_and_info_keeps_answering(server, subjects):
    base = server["base"]
    dirs_before = _upload_dirs()
    # 1 GB announced: refused from the header, before the body is sent
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as s:
        s.sendall(b"POST /infer/disk_shape HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                  b"boundary=x\r\nContent-Length: 1000000000\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    # a 4096 x 4096 image (a small upload: it compresses) is refused from its header
    big_path = server["root"] / "big.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4096, 4096), np.uint8), np.diag([0.1, 0.1, 1.0, 1.0])), str(big_path))
    big = big_path.read_bytes()
    assert len(big) < 1024 * 1024  # small on the wire: only the header tells its size
    status, _, body = _http("POST", f"{base}/infer/disk_shape?output=json", fields={"params": "{}"},
                            files={"file": ("big.nii.gz", big)})
    assert status == 422 and b"exceeds" in body and b"/tmp" not in body, body[:300]
    # bad params name the problem, and nothing is left behind
    for params, word in [("{not json", b"params"), (json.dumps({"threshold": 2}), b"threshold"),
                         (json.dumps({"foreground": "abc"}), b"foreground")]:
        status, _, body = _http("POST", f"{base}/infer/disk_shape?image={next(iter(subjects))}", fields={"params": params})
        assert status == 400 and word in body, (params, status, body[:200])
    assert _upload_dirs() <= dirs_before
    # /info/ answers while a search runs
    worker = threading.Thread(target=_infer_all, args=(base, next(iter(subjects))))
    worker.start()
    time.sleep(1.0)
    waits = []
    while worker.is_alive() and len(waits) < 5:
        t = time.time()
        assert _http("GET", f"{base}/info/", timeout=10)[0] == 200
        waits.append(time.time() - t)
        time.sleep(0.5)
    worker.join()
    assert waits and max(waits) < 5.0, waits


def test_concurrent_requests_all_answer_the_same(server, subjects):
    image_id, subject = next(iter(subjects.items()))
    clicks = [contour_centroid(np.asarray(subject.disks[0]["points_px"])).tolist()]
    results = [None] * 3

    def run(k):
        results[k] = _infer_all(server["base"], image_id, {"foreground": clicks})[0]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    points = [r["disks"][0]["points_px"] for r in results]
    assert all(p == points[0] for p in points) and results[0]["disks"][0]["level"] == "L5/S1"


def test_robustness_task_flags_displacement_over_the_tolerance(server, subjects):
    image_id, subject = next(iter(subjects.items()))
    clicks = [contour_centroid(np.asarray(d["points_px"])).tolist() for d in subject.disks[:2]]
    result, _ = _infer_all(server["base"], image_id, {"foreground": clicks, "eps": 0.05, "steps": 3,
                                                      "tolerance_mm": 0.0001}, model="disk_shape_robustness")
    for d in result["disks"]:
        r = d["robustness"]
        assert 0.0 < r["mean_displacement_mm"] <= r["max_displacement_mm"] < 30.0
        assert r["exceeds_tolerance"] is True
    status, _, body = _http("POST", f"{server['base']}/infer/disk_shape_robustness?image={image_id}",
                            fields={"params": json.dumps({"foreground": clicks, "eps": 5})})
    assert status == 400 and b"eps" in body
