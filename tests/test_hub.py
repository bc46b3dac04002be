"""Issue #8: Hub download / push / pull, hf:// checkpoints, W&B artifacts, safe loading.

Everything runs against a stand-in Hub this file starts on 127.0.0.1: just the endpoints
huggingface_hub calls for snapshot_download, create_repo and upload_folder (HF_ENDPOINT points
at it). No test reaches the network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
import torch
import yaml

from pippo_lightning.checkpoints.loading import UnsafeCheckpointError
from pippo_lightning.checkpoints.reading import safe_torch_load
from pippo_lightning.cli.data import main as data_main
from pippo_lightning.cli.hub import main as hub_main
from pippo_lightning.compressors.identity import IdentityCompressor
from pippo_lightning.data.npy_io import write_npy_sample
from pippo_lightning.inference.pipeline import CheckpointError, load_stage
from pippo_lightning.sharing.artifacts import log_artifacts
from pippo_lightning.sharing.download import split_samples
from pippo_lightning.sharing.transfer import build_bundle, pull_checkpoint
from pippo_lightning.studio.subject import SubjectParams
from pippo_lightning.studio.synthetic import StudioConfig, render_subject_sample
from tests.test_generate import TinyRun, tiny_run
from tests.wandb_offline import offline_artifacts

TOKEN = "hf_stand_in_token"


# ----------------------------------------------------------------------- stand-in Hub
@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    sha: str = "0" * 40

    def commit(self, files: dict[str, bytes]) -> None:
        self.files.update(files)
        listing = json.dumps(
            sorted((k, hashlib.sha1(v).hexdigest()) for k, v in self.files.items())
        )
        self.sha = hashlib.sha1(listing.encode()).hexdigest()


@dataclass
class StandInHub:
    """Repos keyed by (kind, repo id), kind "models" or "datasets"; every request logged."""

    url: str = ""
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


def _handler(hub: StandInHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        # -- helpers
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, value: Any, headers: dict[str, str] | None = None):
            body = json.dumps(value).encode()
            self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

        def _authorised(self, write: bool = False) -> bool:
            auth = self.headers.get("Authorization")
            if auth is None and not write:
                return True
            if auth == f"Bearer {TOKEN}":
                return True
            self._json(401, {"error": "Invalid credentials in Authorization header"})
            return False

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        # -- routes
        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append(f"{self.command} {path}")
            if not self._authorised():
                return
            api = re.fullmatch(
                r"/api/(models|datasets)/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path
            )
            if api:
                repo = hub.repos.get((api[1], api[2]))
                if repo is None:
                    self._json(
                        404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                    )
                elif api[3] == "revision":
                    siblings = [{"rfilename": name} for name in sorted(repo.files)]
                    self._json(
                        200, {"id": api[2], "sha": repo.sha, "siblings": siblings, "private": False}
                    )
                else:
                    self._json(
                        200,
                        [
                            {
                                "type": "file",
                                "path": name,
                                "size": len(data),
                                "oid": hashlib.sha1(data).hexdigest(),
                            }
                            for name, data in sorted(repo.files.items())
                        ],
                    )
                return
            resolve = re.fullmatch(r"/(?:(datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if resolve:
                repo = hub.repos.get((resolve[1] or "models", resolve[2]))
                data = None if repo is None else repo.files.get(resolve[4])
                if data is None:
                    self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                    return
                etag = hashlib.sha1(data).hexdigest()
                self._send(200, data, {"ETag": f'"{etag}"', "X-Repo-Commit": repo.sha})  # type: ignore[union-attr]
                return
            self._json(404, {"error": f"no route {path}"})

        def do_POST(self) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append(f"POST {path}")
            body = self._body()
            if not self._authorised(write=True):
                return
            if path == "/api/validate-yaml":  # the model card's front matter must be YAML
                content = json.loads(body)["content"]
                try:
                    yaml.safe_load(content.split("---")[1])
                except (IndexError, yaml.YAMLError) as error:
                    self._json(400, {"errors": [{"message": str(error)}]})
                else:
                    self._json(200, {"warnings": []})
                return
            if path == "/api/repos/create":
                payload = json.loads(body)
                repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
                kind = f"{payload.get('type') or 'model'}s"
                if (kind, repo_id) in hub.repos:
                    self._json(
                        409,
                        {"error": "You already created this repo", "url": f"{hub.url}/{repo_id}"},
                    )
                    return
                hub.repos[(kind, repo_id)] = Repo()
                self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                return
            route = re.fullmatch(
                r"/api/(models|datasets)/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path
            )
            repo = hub.repos.get((route[1], route[2])) if route else None
            if repo is None:
                self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            elif route[3] == "preupload":  # type: ignore[index]
                files = json.loads(body)["files"]
                # Everything as regular (inline base64) files: no LFS / Xet transfer to imitate.
                self._json(
                    200,
                    {
                        "files": [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                            for f in files
                        ]
                    },
                )
            else:
                added = {}
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                repo.commit(added)
                self._json(
                    200,
                    {"commitUrl": f"{hub.url}/{route[2]}/commit/{repo.sha}", "commitOid": repo.sha},
                )  # type: ignore[index]

    return Handler


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[StandInHub]:
    """The stand-in Hub on a free loopback port, with huggingface_hub pointed at it."""
    state = StandInHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _point_hub_at(monkeypatch, state.url, tmp_path / "hf_home", offline=False, token=TOKEN)
    monkeypatch.setenv("PIPPO_HUB_CACHE", str(tmp_path / "pippo_hub"))
    yield state
    server.shutdown()
    server.server_close()


def _point_hub_at(
    monkeypatch: pytest.MonkeyPatch, url: str, home: Path, offline: bool, token: str | None
) -> None:
    """huggingface_hub reads its settings into module constants at import: patch both."""
    from huggingface_hub import constants

    env = {"HF_ENDPOINT": url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1" if offline else "0"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))


# ----------------------------------------------------------------------- sample data
STUDIO = StudioConfig(resolution=16, rings=((0.0, 4), (30.0, 4)))
SAMPLE_NAMES = [f"sample_{i}.npy" for i in range(5)]


@pytest.fixture(scope="module")
def sample_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Five valid samples in the original's .npy layout, as the dataset repo would hold them."""
    folder = tmp_path_factory.mktemp("ava")
    out = {}
    for index, name in enumerate(SAMPLE_NAMES):
        write_npy_sample(folder / name, render_subject_sample(SubjectParams.sample(index), STUDIO))
        out[f"ava_samples/{name}"] = (folder / name).read_bytes()
    return out


def _dataset(hub: StandInHub, files: dict[str, bytes]) -> None:
    repo = Repo()
    repo.commit({**files, "README.md": b"# pippo", "other/skip.bin": b"not ours"})
    hub.repos[("datasets", "yashkant/pippo")] = repo


def _error_line(capsys: pytest.CaptureFixture) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


# --------------------------------------------------------------------- download-samples
def test_download_samples_validates_splits_and_publishes_atomically(
    hub: StandInHub, sample_bytes: dict[str, bytes], tmp_path: Path, capsys
) -> None:
    _dataset(hub, sample_bytes)
    target = tmp_path / "data" / "ava256_samples"
    assert data_main(["download-samples", "--out", str(target)]) == 0
    assert "1 val samples" in capsys.readouterr().out
    train, val = (
        sorted(p.name for p in (target / "train").iterdir()),
        sorted(p.name for p in (target / "val").iterdir()),
    )
    assert (train, val) == split_samples(SAMPLE_NAMES, 0.1) and len(val) == 1
    assert sorted(train + val) == SAMPLE_NAMES
    assert (target / "val" / val[0]).read_bytes() == sample_bytes[f"ava_samples/{val[0]}"]
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["commit"] == hub.repos[("datasets", "yashkant/pippo")].sha
    assert not any("other/skip.bin" in r for r in hub.requests)  # allow_patterns honoured
    assert [p.name for p in target.parent.iterdir()] == ["ava256_samples"]  # no staging left

    # The data config trains on it as laid out.
    from pippo_lightning.data.datamodule import MultiViewDataModule

    data = MultiViewDataModule(root=str(target), num_views=2, resolution=16, batch_size=2)
    data.setup("fit")
    assert len(data.train_dataset) == 4 and len(data.val_dataset) == 1

    # Second call without --overwrite: refused before any download, old data untouched.
    assert data_main(["download-samples", "--out", str(target)]) == 2
    assert "--overwrite" in _error_line(capsys)


def test_download_samples_refuses_invalid_files_and_leaves_nothing(
    hub: StandInHub, sample_bytes: dict[str, bytes], tmp_path: Path, capsys
) -> None:
    _dataset(hub, {**sample_bytes, "ava_samples/broken.npy": b"\x93NUMPY garbage"})
    target = tmp_path / "ava"
    assert data_main(["download-samples", "--out", str(target)]) == 2
    line = _error_line(capsys)
    assert "failed validation" in line and "broken.npy" in line and "nothing written" in line
    assert not target.exists() and list(tmp_path.iterdir()) == [tmp_path / "hf_home"]


def test_download_samples_offline_and_wrong_token_say_what_to_do(
    hub: StandInHub, sample_bytes: dict[str, bytes], tmp_path: Path, monkeypatch, capsys
) -> None:
    _dataset(hub, sample_bytes)
    # Once in the Hugging Face cache (HF_HOME), offline mode serves it without a request.
    assert data_main(["download-samples", "--out", str(tmp_path / "online")]) == 0
    hub.requests.clear()
    _point_hub_at(monkeypatch, hub.url, tmp_path / "hf_home", offline=True, token=None)
    assert data_main(["download-samples", "--out", str(tmp_path / "cached")]) == 0
    assert len(list((tmp_path / "cached").glob("*/*.npy"))) == 5 and not hub.requests
    capsys.readouterr()

    target = tmp_path / "ava"
    _point_hub_at(monkeypatch, hub.url, tmp_path / "empty_home", offline=True, token=None)
    assert data_main(["download-samples", "--out", str(target)]) == 2
    line = _error_line(capsys)
    assert "HF_HUB_OFFLINE=1" in line and "unset HF_HUB_OFFLINE" in line, line
    assert not target.exists() and not hub.requests  # offline means no request at all

    _point_hub_at(monkeypatch, hub.url, tmp_path / "home", offline=False, token="hf_wrong")
    assert data_main(["download-samples", "--out", str(target)]) == 2
    line = _error_line(capsys)
    assert "rejected the token (401)" in line and "HF_TOKEN" in line, line
    assert not target.exists()


def test_download_samples_without_network_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    _point_hub_at(monkeypatch, url, tmp_path / "home", offline=False, token=None)
    assert data_main(["download-samples", "--out", str(tmp_path / "ava")]) == 2
    line = _error_line(capsys)
    assert "unreachable" in line and "HF_ENDPOINT" in line, line


# ------------------------------------------------------------------------- push / pull
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return tiny_run(tmp_path_factory)


def _generate(stage: Any) -> torch.Tensor:
    """Views of a fixed photo on a turntable, with a fixed seed (what pippo-generate does)."""
    from pippo_lightning.geometry.orbit import frontal_camera, turntable_cameras
    from pippo_lightning.inference.photo import AnchorPose
    from pippo_lightning.inference.pipeline import build_batch, generate_views, sampling_config

    r = stage.image_size
    photo = torch.linspace(-1, 1, 3 * r * r).reshape(1, 3, r, r)
    cams = turntable_cameras(stage.num_views, resolution=r)
    batch = build_batch(photo, frontal_camera(resolution=r), cams, AnchorPose(), r)
    with torch.no_grad():
        return generate_views(stage, batch, sampling_config(stage, {"num_steps": 2, "seed": 3}))


def _compressor() -> IdentityCompressor:
    return IdentityCompressor(space_to_depth=4)


def test_push_then_pull_loads_to_identical_outputs(
    hub: StandInHub, run: TinyRun, tmp_path: Path, capsys
) -> None:
    assert hub_main(["push", str(run.checkpoint), "me/pippo-tiny"]) == 0
    assert "hf://me/pippo-tiny" in capsys.readouterr().out
    files = hub.repos[("models", "me/pippo-tiny")].files
    assert set(files) == {"model.safetensors", "pippo.json", "config.yaml", "README.md"}
    assert b"ckpt=hf://me/pippo-tiny" in files["README.md"]
    assert json.loads(files["pippo.json"])["weights"] == "ema"

    original = load_stage(run.checkpoint, _compressor())
    pulled = load_stage("hf://me/pippo-tiny", _compressor())  # what pippo-generate/-eval call
    assert torch.equal(_generate(original), _generate(pulled))
    for key, value in original.ema.shadow.state_dict().items():
        assert torch.equal(value, pulled.ema.shadow.state_dict()[key]), key
    # Pulled into the cache with the run's config beside it (compressor_from=run finds it).
    ckpt = pull_checkpoint("me/pippo-tiny")
    assert (ckpt.parents[1] / ".hydra" / "config.yaml").is_file()

    # --weights raw shares the trained weights; pull --out gives a plain local copy.
    assert hub_main(["push", str(run.checkpoint), "me/pippo-raw", "--weights", "raw"]) == 0
    assert hub_main(["pull", "hf://me/pippo-raw", "--out", str(tmp_path / "raw")]) == 0
    assert hub_main(["pull", "me/pippo-raw", "--out", str(tmp_path / "raw")]) == 0  # again: ok
    raw = load_stage(tmp_path / "raw" / "checkpoints" / "last.ckpt", _compressor())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert hub_main(["pull", "me/pippo-raw", "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    for key, value in original.model.state_dict().items():
        assert torch.equal(value, raw.ema.shadow.state_dict()[key]), key


def test_push_with_a_wrong_token_or_offline_is_one_clear_line(
    hub: StandInHub, run: TinyRun, tmp_path: Path, monkeypatch, capsys
) -> None:
    _point_hub_at(monkeypatch, hub.url, tmp_path / "home", offline=False, token="hf_wrong")
    assert hub_main(["push", str(run.checkpoint), "me/pippo-tiny"]) == 2
    assert "rejected the token (401)" in _error_line(capsys)
    _point_hub_at(monkeypatch, hub.url, tmp_path / "home", offline=True, token=TOKEN)
    assert hub_main(["push", str(run.checkpoint), "me/pippo-tiny"]) == 2
    assert "HF_HUB_OFFLINE=1" in _error_line(capsys)
    assert hub_main(["pull", "me/pippo-tiny"]) == 2
    assert "HF_HUB_OFFLINE=1" in _error_line(capsys)
    assert not hub.repos


def test_model_card_of_a_real_eval_report(
    hub: StandInHub, run: TinyRun, tmp_path: Path, monkeypatch, capsys
) -> None:
    import sys

    from pippo_lightning.cli.evaluate import main as evaluate_main
    from tests.test_evaluate import eval_overrides

    out = tmp_path / "eval"  # pippo-eval in-process, as tests/test_evaluate.py runs it
    argv = eval_overrides(run, "num_views=4", f"hydra.run.dir={out}")
    monkeypatch.setattr(sys, "argv", ["pippo-eval", *argv])
    evaluate_main()
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    capsys.readouterr()
    push = ["push", str(run.checkpoint), "me/card", "--report", str(out / "report.json")]
    assert hub_main(push) == 0
    files = hub.repos[("models", "me/card")].files
    card = files["README.md"].decode()
    print("\n" + card)
    assert json.loads(files["report.json"]) == report
    assert "## Evaluation (pippo-eval)" in card and f"| PSNR (dB) | {m['psnr']:.2f} |" in card
    gt = m["gt_reprojection_error_pct"]  # null when 4 views give no matchable pair
    assert f"| {'n/a' if gt is None else f'{gt:.2f}'} |" in card
    assert "| stage | `PostTrainStage` |" in card and "| resolution | 32 px |" in card
    assert "| training steps | 2 |" in card and "synthetic studio" in card
    assert "pippo-generate ckpt=hf://me/card photo=me.jpg" in card


# ------------------------------------------------------------------------- safe loading
class _Exploit:
    """Unpickling this would call exec(); the test asserts that it never happens."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(run: TinyRun, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    checkpoint = torch.load(run.checkpoint, weights_only=True)
    checkpoint["hyper_parameters"]["payload"] = _Exploit(marker)
    bad = tmp_path / "bad.ckpt"
    torch.save(checkpoint, bad)
    legacy = tmp_path / "legacy.ckpt"  # a bare pickle, not torch's zip format
    legacy.write_bytes(pickle.dumps({"state_dict": {}, "x": _Exploit(marker)}, protocol=2))
    framed = tmp_path / "framed.ckpt"  # protocol 4: torch stops at an opcode, not the global
    framed.write_bytes(pickle.dumps({"state_dict": {}, "x": _Exploit(marker)}, protocol=4))

    for path in (bad, legacy):
        with pytest.raises(CheckpointError, match=r"refused to load .* need code .*\(exec\)"):
            load_stage(path, _compressor())
        with pytest.raises(UnsafeCheckpointError, match=r"\(exec\)"):
            safe_torch_load(path)
    with pytest.raises(CheckpointError, match="not a readable Lightning checkpoint"):
        load_stage(framed, _compressor())
    with pytest.raises(UnsafeCheckpointError, match="refused"):  # and so does pippo-hub push
        build_bundle(bad, tmp_path / "bundle", "me/x")
    assert not marker.exists()


# ------------------------------------------------------------------------- W&B artifacts
def test_artifacts_stay_in_the_offline_run(run: TinyRun, tmp_path: Path) -> None:
    import wandb

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"global_step": 2, "metrics": {"psnr": 7.5}}))
    (tmp_path / "report.md").write_text("# report\n")
    wb = wandb.init(mode="offline", dir=str(tmp_path), project="pippo_lightning", name="art")
    logged = log_artifacts(wb, checkpoint=run.checkpoint, report=report, config={"seed": 0})
    wb.finish()
    assert [a.type for a in logged] == ["model", "eval-report"]

    deadline = time.monotonic() + 20
    while len(found := offline_artifacts(tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # the W&B service may still be flushing the run file
    by_type = {a["type"]: a for a in found}
    run_dir = next(tmp_path.glob("wandb/offline-run-*"))
    model = by_type["model"]
    assert set(model["files"]) == {"last.ckpt", "config.yaml"}
    assert model["metadata"]["global_step"] == 2
    for local in model["files"].values():
        assert Path(local).is_relative_to(run_dir) and Path(local).is_file()
    assert Path(model["files"]["last.ckpt"]).read_bytes() == run.checkpoint.read_bytes()
    assert set(by_type["eval-report"]["files"]) == {"report.json", "report.md", "config.yaml"}
    assert by_type["eval-report"]["metadata"]["psnr"] == 7.5
    assert log_artifacts(None, checkpoint=run.checkpoint) == []  # no W&B logger: a no-op


def test_the_ava256_data_config_points_at_the_download(compose_config, tmp_path: Path) -> None:
    import hydra

    cfg = compose_config("data=ava256_samples")
    assert cfg.data.root == str(tmp_path / "data" / "ava256_samples")  # download's default
    data = hydra.utils.instantiate(cfg.data)
    assert data.root == tmp_path / "data" / "ava256_samples" and data.synthetic is None


def test_pippo_generate_runs_an_hf_checkpoint(
    hub: StandInHub, run: TinyRun, tmp_path: Path, monkeypatch, capsys
) -> None:
    """`pippo-generate ckpt=hf://...` end to end. The compressor comes from the overrides the
    model card lists (cli/generate.py reads the run config only for local paths)."""
    import sys

    import numpy as np
    from PIL import Image

    from pippo_lightning.cli.generate import main as generate_main

    assert hub_main(["push", str(run.checkpoint), "me/gen"]) == 0
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    argv = [
        "ckpt=hf://me/gen",
        f"photo={photo}",
        "num_views=3",
        "sampling.num_steps=2",
        "progress=false",
        "compressor.space_to_depth=4",
        f"hydra.run.dir={out}",
    ]
    monkeypatch.setattr(sys, "argv", ["pippo-generate", *argv])
    generate_main()
    capsys.readouterr()
    assert len(list((out / "frames").glob("*.png"))) == 3
