"""Weights registry: schema, resolve order, sha256 checks, downloads, and safe loading."""

import hashlib
from pathlib import Path

import pytest
import torch

from synthbrain import weights
from synthbrain.errors import EngineUnavailable
from synthbrain.weights import WeightsError

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """An arbitrary Python object: unpickling it could run code, so loading must refuse."""

    def __reduce__(self):
        return (print, ("this would have run",))


def entry_toml(name="w1", **overrides) -> str:
    fields = {
        "name": name, "engine": "paired", "lesion": "stroke", "contrasts": ["t1"],
        "spatial_dims": 3, "spacing": [4.0, 4.0, 4.0], "grid": [8, 8, 8],
        "file": f"{name}.safetensors", "sha256": "0" * 64, "params": 10,
        "training_data": "phantom", "command": "synthbrain train", "licence": "Apache-2.0",
    }  # fmt: skip
    fields.update(overrides)
    lines = ["[[weights]]"]
    for key, value in fields.items():
        if value is None:
            continue
        text = f'"{value}"' if isinstance(value, str) else str(value).replace("'", '"')
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def write_weights(path: Path) -> str:
    """A tiny safetensors file; returns its sha256."""
    weights.save_state({"w": torch.arange(6.0).reshape(2, 3)}, path, metadata={"config": {"c": 4}})
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty built-in registry, package weights folder and cache under tmp_path."""
    builtin = tmp_path / "builtin.toml"
    builtin.write_text("")
    package = tmp_path / "package_weights"
    package.mkdir()
    monkeypatch.setattr(weights, "registry_path", lambda: builtin)
    monkeypatch.setattr(weights, "PACKAGE_WEIGHTS_DIR", package)
    monkeypatch.setenv("SYNTHBRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SYNTHBRAIN_WEIGHTS", raising=False)
    return builtin, package


# ---------------------------------------------------------------- registry


def test_package_copy_identical_to_top_level():
    top, packaged = REPO / "weights.toml", REPO / "synthbrain" / "weights.toml"
    assert top.read_bytes() == packaged.read_bytes(), "run: cp weights.toml synthbrain/weights.toml"
    assert weights.registry_path() == top


def test_shipped_registry_loads(monkeypatch):
    monkeypatch.delenv("SYNTHBRAIN_WEIGHTS", raising=False)
    for path in (REPO / "weights.toml", REPO / "synthbrain" / "weights.toml"):
        entries = weights.load_registry_file(path)
        assert len({e.name for e in entries}) == len(entries)
    assert isinstance(weights.registry(), dict)


def test_empty_registry(isolated):
    assert weights.registry() == {}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"engine": "gan"}, "engine"),
        ({"sha256": "abc"}, "sha256"),
        ({"file": None}, "file or a url"),
        ({"url": "ftp://x/y.safetensors"}, "url"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"grid": [8, 8]}, "grid"),
        ({"colour": "red"}, "colour"),
        ({"params": -1}, "params"),
    ],
)
def test_registry_schema_errors(isolated, tmp_path, overrides, message):
    bad = tmp_path / "mine.toml"
    bad.write_text(entry_toml(**overrides))
    with pytest.raises(WeightsError, match=message) as info:
        weights.registry(bad)
    assert "mine.toml" in str(info.value) and "w1" in str(info.value)


def test_registry_missing_field_and_bad_toml(isolated, tmp_path):
    bad = tmp_path / "mine.toml"
    bad.write_text(entry_toml().replace('licence = "Apache-2.0"\n', ""))
    with pytest.raises(WeightsError, match="licence"):
        weights.registry(bad)
    bad.write_text("[[weights]\nname=")
    with pytest.raises(WeightsError, match="TOML"):
        weights.registry(bad)
    with pytest.raises(WeightsError, match="not found"):
        weights.registry(tmp_path / "absent.toml")


def test_duplicate_names_are_an_error(isolated, tmp_path, monkeypatch):
    builtin, _ = isolated
    builtin.write_text(entry_toml("dup"))
    mine = tmp_path / "mine.toml"
    mine.write_text(entry_toml("dup"))
    monkeypatch.setenv("SYNTHBRAIN_WEIGHTS", str(mine))
    with pytest.raises(WeightsError, match="'dup' is also defined in .*builtin.toml"):
        weights.registry()


def test_user_file_from_env_and_entry_for_lesion(isolated, tmp_path, monkeypatch):
    builtin, _ = isolated
    builtin.write_text(entry_toml("builtin-stroke"))
    mine = tmp_path / "mine.toml"
    mine.write_text(entry_toml("my-stroke") + entry_toml("my-glioma", lesion="glioma"))
    monkeypatch.setenv("SYNTHBRAIN_WEIGHTS", str(mine))
    assert list(weights.registry()) == ["builtin-stroke", "my-stroke", "my-glioma"]
    assert weights.entry_for_lesion("paired", "stroke").name == "my-stroke"
    with pytest.raises(EngineUnavailable, match="paired has glioma, stroke"):
        weights.entry_for_lesion("paired", "ms")
    with pytest.raises(EngineUnavailable, match="deviation has none"):
        weights.entry_for_lesion("deviation", "stroke")


# ---------------------------------------------------------------- resolve order


def test_resolve_explicit_path(isolated, tmp_path):
    path = tmp_path / "any.safetensors"
    write_weights(path)
    assert weights.resolve(path) == path
    assert weights.resolve(str(path)) == path
    with pytest.raises(WeightsError, match="not found"):
        weights.resolve(tmp_path / "missing.safetensors")
    with pytest.raises(WeightsError, match="unknown weights 'nothing'"):
        weights.resolve("nothing")


def test_resolve_embedded_before_cache(isolated):
    builtin, package = isolated
    sha = write_weights(package / "w1.safetensors")
    builtin.write_text(entry_toml(sha256=sha))
    cached = weights.cache_dir() / "w1" / "w1.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes((package / "w1.safetensors").read_bytes())
    assert weights.resolve("w1") == package / "w1.safetensors"
    (package / "w1.safetensors").unlink()
    assert weights.resolve("w1") == cached


def test_embedded_hash_mismatch_is_an_error_and_keeps_file(isolated):
    builtin, package = isolated
    write_weights(package / "w1.safetensors")
    builtin.write_text(entry_toml(sha256="1" * 64))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        weights.resolve("w1")
    assert (package / "w1.safetensors").exists()
    ok, message = weights.verify(weights.registry()["w1"])
    assert not ok and "mismatch" in message


def test_user_registry_file_is_relative_to_its_folder(isolated, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    sha = write_weights(folder / "w1.safetensors")
    (folder / "w.toml").write_text(entry_toml(sha256=sha))
    assert weights.resolve("w1", extra=folder / "w.toml") == folder / "w1.safetensors"


def test_resolve_downloads_file_url_into_cache(isolated, tmp_path):
    builtin, _ = isolated
    remote = tmp_path / "remote" / "model.safetensors"
    remote.parent.mkdir()
    sha = write_weights(remote)
    builtin.write_text(entry_toml(file=None, url=remote.as_uri(), sha256=sha))
    entry = weights.registry()["w1"]
    assert weights.verify(entry) == (False, "not available locally; "
                                     "`synthbrain weights path w1` downloads it")  # fmt: skip
    with pytest.raises(WeightsError, match="downloads disabled"):
        weights.resolve("w1", download=False)
    path = weights.resolve("w1", progress=False)
    assert path == weights.cache_dir() / "w1" / "model.safetensors"
    remote.unlink()
    assert weights.resolve("w1") == path  # from the cache now
    assert weights.verify(entry)[0]
    path.write_bytes(b"corrupted")  # a bad cached copy is dropped, and cannot be re-fetched
    with pytest.raises(WeightsError, match="could not download"):
        weights.resolve("w1")
    assert not path.exists()


def test_download_hash_mismatch_deletes_file(isolated, tmp_path):
    builtin, _ = isolated
    remote = tmp_path / "model.safetensors"
    write_weights(remote)
    builtin.write_text(entry_toml(file=None, url=remote.as_uri(), sha256="2" * 64))
    with pytest.raises(WeightsError, match="expected 2222.*deleted") as info:
        weights.resolve("w1", progress=False)
    assert info.value.exit_code == 2
    folder = weights.cache_dir() / "w1"
    assert not folder.exists() or list(folder.iterdir()) == []


# ---------------------------------------------------------------- loading and saving


def test_save_and_load_safetensors_with_metadata(tmp_path):
    state = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    state["view"] = state["a"][0]  # shared storage is copied, not refused
    path = weights.save_state(
        state, tmp_path / "m.safetensors", dtype=torch.float16, metadata={"config": {"dims": 3}}
    )
    loaded = weights.load_state(path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    assert loaded["a"].dtype == torch.float16 and loaded["b"].dtype == torch.int64
    assert torch.allclose(loaded["a"].float(), state["a"], atol=1e-2)
    meta = weights.read_metadata(path)
    assert meta["config"] == {"dims": 3} and "synthbrain_version" in meta


def test_load_state_checks_hash(tmp_path):
    path = tmp_path / "m.safetensors"
    write_weights(path)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        weights.load_state(path, sha256="3" * 64)


def test_load_plain_pt_and_key(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"ema": {"w": torch.ones(2)}, "step": 3}, path)
    assert torch.equal(weights.load_state(path, key="ema")["w"], torch.ones(2))
    with pytest.raises(WeightsError, match="flat"):
        weights.load_state(path)
    torch.save({"w": torch.zeros(3)}, path)
    assert torch.equal(weights.load_state(path)["w"], torch.zeros(3))


def test_load_state_refuses_pickled_objects(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "payload": Payload()}, path)
    with pytest.raises(WeightsError, match="refused"):
        weights.load_state(path)
    assert "would have run" not in capsys.readouterr().out


def test_load_state_bad_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        weights.load_state(tmp_path / "none.pt")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="safetensors"):
        weights.load_state(junk)
    other = tmp_path / "m.npz"
    other.write_bytes(b"x")
    with pytest.raises(WeightsError, match="format"):
        weights.load_state(other)


def test_save_state_bytes_reproducible(tmp_path):
    import hashlib

    import torch

    from synthbrain.io.statedict import read_metadata, save_state

    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    meta = {"config": {"width": 8}, "engine": "deviation", "lesion": "tumor", "steps": 3}
    digests = set()
    for i in range(4):
        path = save_state(state, tmp_path / f"w{i}.safetensors", metadata=meta)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1  # a reproducing command can reproduce the sha256
    assert read_metadata(tmp_path / "w0.safetensors")["config"] == {"width": 8}


# ---------------------------------------------------------------- the one engine loader
def _engine_file(path: Path, engine: str) -> Path:
    weights.save_state(
        {"w": torch.ones(2, dtype=torch.bfloat16)}, path,
        metadata={"engine": engine, "config": {"width": 4}},
    )  # fmt: skip
    return path


def test_load_engine_weights_reads_a_file(isolated, tmp_path):
    path = _engine_file(tmp_path / "mine.safetensors", "paired")
    loaded = weights.load_engine_weights("paired", path)
    assert (loaded.name, loaded.registered, loaded.config) == ("mine", False, {"width": 4})
    assert loaded.state["w"].dtype == torch.float32
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_load_engine_weights_refuses_another_engines_file(isolated, tmp_path):
    path = _engine_file(tmp_path / "dev.safetensors", "deviation")
    with pytest.raises(WeightsError, match="not paired-engine weights") as info:
        weights.load_engine_weights("paired", path)
    assert "dev.safetensors" in str(info.value)


def test_load_engine_weights_by_registered_name(isolated, tmp_path):
    builtin, package = isolated
    path = _engine_file(package / "w1.safetensors", "paired")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    builtin.write_text(entry_toml("w1", sha256=digest))
    by_name = weights.load_engine_weights("paired", "w1")
    by_lesion = weights.load_engine_weights("paired", lesion="stroke")
    assert by_name.registered and by_lesion.registered
    assert by_name.path == by_lesion.path == path and by_name.sha256 == digest
    with pytest.raises(EngineUnavailable):
        weights.load_engine_weights("paired", lesion="wmh")
