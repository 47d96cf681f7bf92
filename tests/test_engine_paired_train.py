"""`synthbrain train --engine paired` on a tiny 16^3 HDF5 set: lesion type, weights entry, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from synthbrain.engines.paired import training as paired_train
from synthbrain.engines.paired.entry import entry_name
from synthbrain.errors import InputError
from synthbrain.io.dataset import H5Writer
from synthbrain.training.request import TrainRequest
from synthbrain.weights import read_metadata, registry, resolve

GRID = (16, 16, 16)
TINY_TOML = """
[model]
ae_base_channels = 4
ae_channel_mults = [1, 2, 2]
denoiser_base_channels = 8
denoiser_channel_mults = [1]
denoiser_attention_levels = []
T = 64

[autoencoder]
steps = 2
batch_size = 1
crop = 8
warmup = 0
log_every = 1
checkpoint_every = 2
val_every = 2
val_batches = 1
num_workers = 0
device = "cpu"

[diffusion]
steps = 2
batch_size = 2
warmup = 0
log_every = 1
checkpoint_every = 2
val_every = 2
val_batches = 1
device = "cpu"
"""


def write_config(path: Path) -> Path:
    """The tiny two-stage config (2 steps per stage, CPU)."""
    path.write_text(TINY_TOML)
    return path


def make_h5(path: Path, lesions: list[str], space: str | None = None) -> Path:
    """A 16^3 T1 set, one subject per entry of `lesions` ("none" = healthy, no labels)."""
    writer = H5Writer(
        path, contrasts=["t1"], spacing=12.0, grid=list(GRID), label_names={"lesion": 1},
        label_convention="binary", overwrite=True,
        extra_attrs={"space": space} if space else None,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    brain = np.zeros(GRID, bool)
    brain[3:-3, 3:-3, 3:-3] = True
    for i, lesion in enumerate(lesions):
        healthy = rng.random((1, *GRID)).astype(np.float32) * 0.5 * brain
        labels = np.zeros(GRID, np.uint8)
        if lesion != "none":
            labels[6:10, 6:10, 6:10] = 1
        images = healthy.copy()
        images[0][labels > 0] = 0.9
        writer.add_subject(
            f"{'ixi' if lesion == 'none' else 'sub'}{i:02d}", images, brain,
            labels if lesion != "none" else None, healthy,
            attrs={"lesion_type": lesion, "healthy": lesion == "none"},
        )  # fmt: skip
    return writer.finish(split_fractions=(0.75, 0.25, 0.0))


@pytest.fixture(scope="module")
def mixed_set(tmp_path_factory) -> Path:
    """Healthy subjects (ids sorting first, like IXI before sub-…), two stroke and one WMH."""
    folder = tmp_path_factory.mktemp("mixed")
    return make_h5(folder / "mixed.h5", ["none", "none", "none", "stroke", "wmh", "stroke"])


@pytest.fixture(scope="module")
def trained(mixed_set, tmp_path_factory) -> dict:
    """One single-process run into a folder named like an embedded weights entry."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.delenv("SYNTHBRAIN_WEIGHTS", raising=False)
    folder = tmp_path_factory.mktemp("runs")
    summary = paired_train.train(TrainRequest(data=mixed_set, out=folder / "paired-stroke-2mm",
                                 config_file=write_config(folder / "tiny.toml")))  # fmt: skip
    monkeypatch.undo()
    return summary


def test_lesion_type_is_the_commonest_among_lesion_subjects(mixed_set, trained):
    assert paired_train.data_lesion(mixed_set) == "stroke"
    assert read_metadata(trained["weights"])["config"]["lesion"] == "stroke"
    assert paired_train.model_config_for(mixed_set, {}).lesion == "stroke"
    assert paired_train.model_config_for(mixed_set, {"lesion": "wmh"}).lesion == "wmh"


def test_lesion_type_ties_break_alphabetically(tmp_path):
    data = make_h5(tmp_path / "tie.h5", ["wmh", "none", "stroke"])
    assert paired_train.data_lesion(data) == "stroke"


def test_set_without_lesions_is_refused_before_writing(tmp_path):
    data = make_h5(tmp_path / "healthy.h5", ["none", "none"])
    config = write_config(tmp_path / "tiny.toml")
    with pytest.raises(InputError, match="no subject has a lesion") as err:
        paired_train.train(TrainRequest(data=data, out=tmp_path / "run", config_file=config))
    assert str(data) in str(err.value)
    with pytest.raises(InputError, match="no subject has a lesion"):  # [model] lesion too
        paired_train.model_config_for(data, {"lesion": "stroke"})
    assert not (tmp_path / "run").exists()


def test_native_space_set_is_refused(tmp_path):
    """preprocess --space native centres grids per subject: off the template the model uses."""
    native = make_h5(tmp_path / "native.h5", ["stroke", "none"], space="native")
    with pytest.raises(InputError, match="--space template"):
        paired_train.model_config_for(native, {})
    template = make_h5(tmp_path / "template.h5", ["stroke", "none"], space="template")
    assert paired_train.model_config_for(template, {}).lesion == "stroke"


def test_weights_entry_registers_beside_the_embedded_weights(trained, monkeypatch):
    entry_file = Path(trained["weights_entry"])
    entry = tomllib.loads(entry_file.read_text())["weights"][0]
    # The run folder is named like an embedded entry: its name gets the file's short hash.
    assert entry["name"] == f"paired-stroke-2mm-{trained['sha256'][:8]}"
    assert entry["file"] == "paired-stroke-12mm.safetensors"  # the file keeps its name
    monkeypatch.setenv("SYNTHBRAIN_WEIGHTS", str(entry_file))
    found = registry()
    assert {"paired-stroke-2mm", "paired-wmh-2mm", entry["name"]} <= set(found)
    assert resolve(entry["name"]).resolve() == Path(trained["weights"]).resolve()
    # Re-exporting the registered run keeps its name (its own entry is no collision).
    run = entry_file.parent
    assert entry_name(run, trained["sha256"]) == entry["name"]


def test_entry_name_is_the_run_folder_name(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHBRAIN_WEIGHTS", raising=False)
    sha = "ab" * 32
    assert entry_name(tmp_path / "stroke-atlas", sha) == "stroke-atlas"
    assert entry_name(tmp_path / "_my run (v2)", sha) == "my-run-v2"  # a valid registry name
    assert entry_name(tmp_path / "paired-wmh-2mm", sha) == "paired-wmh-2mm-abababab"


# One torchrun rank: `synthbrain train` as the CLI runs it, counting how often the process
# group is created and destroyed (argv: the folder for the counts, then the CLI's arguments).
RANK_CODE = """
import json, os, sys
import torch.distributed as dist
calls = {"init": 0, "destroy": 0}
init, destroy = dist.init_process_group, dist.destroy_process_group
def counted_init(*args, **kwargs):
    calls["init"] += 1
    return init(*args, **kwargs)
def counted_destroy(*args, **kwargs):
    calls["destroy"] += 1
    return destroy(*args, **kwargs)
dist.init_process_group, dist.destroy_process_group = counted_init, counted_destroy
from synthbrain.cli import main
try:
    main(sys.argv[2:])
finally:
    calls["left_open"] = dist.is_initialized()
    with open(os.path.join(sys.argv[1], "rank" + os.environ["RANK"] + ".json"), "w") as f:
        json.dump(calls, f)
"""


def test_torchrun_trains_both_stages_in_one_process_group(mixed_set, tmp_path):
    """The paired trainer under torchrun, 2 gloo ranks: one process group for both stages (a
    second one hung at times in stage 2), one weights file, one summary on stdout."""
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "--no-python", sys.executable, "-c", RANK_CODE, str(tmp_path),
        "train", "--engine", "paired", "--data", str(mixed_set), "--out", str(out),
        "--config", str(write_config(tmp_path / "t.toml")), "--json",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
        proc.communicate()
        pytest.fail("torchrun with the paired engine hung")
    assert proc.returncode == 0, stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [{"init": 1, "destroy": 1, "left_open": False}] * 2
    summaries = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, stdout  # rank 0 alone prints
    assert Path(summaries[0]["weights"]).is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    last = {r["stage"]: r["step"] for r in lines if r["kind"] == "train"}
    assert last == {"autoencoder": 2, "diffusion": 2}
    assert sorted(p.name for p in out.glob("paired-*")) == ["paired-stroke-12mm.safetensors"]


def test_load_denoisers_copies_both_sub_models(tmp_path):
    """[diffusion] weights: stage B starts from stage A's sub-models, and a misfit is refused."""
    import torch

    from synthbrain.engines.paired.model import PairedConfig, PairedModel
    from synthbrain.engines.paired.training import export_bundle, load_denoisers

    tiny = dict(
        grid=(16, 16, 16), spacing=12.0, ae_base_channels=4, ae_channel_mults=(1, 2, 2),
        denoiser_base_channels=8, denoiser_channel_mults=(1,), denoiser_attention_levels=(),
    )  # fmt: skip
    torch.manual_seed(0)
    source = PairedModel(PairedConfig(**tiny))
    for p in source.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    path = export_bundle(source, tmp_path / "a.safetensors", {})
    target = PairedModel(PairedConfig(**tiny, prediction="v"))
    load_denoisers(target, path)
    for name in ("eps_x", "eps_y"):
        a_params, b_params = getattr(source, name).parameters(), getattr(target, name).parameters()
        for a, b in zip(a_params, b_params, strict=True):
            assert torch.allclose(a, b, atol=2e-3)  # stored in fp16
    wider = PairedModel(PairedConfig(**{**tiny, "denoiser_base_channels": 16}))
    with pytest.raises(InputError, match="do not fit"):
        load_denoisers(wider, path)


def test_haar_run_trains_no_autoencoder_and_its_weights_load(mixed_set, tmp_path, monkeypatch):
    """representation = "haar": no autoencoder stage, no ae.* keys, an exact image round trip;
    the lesion-weighted / min-SNR loss settings are accepted by the config."""
    import torch

    from synthbrain.engines.paired.run import load_bundle

    monkeypatch.delenv("SYNTHBRAIN_WEIGHTS", raising=False)
    toml = TINY_TOML.replace("[model]\n", '[model]\nrepresentation = "haar"\nprediction = "v"\n')
    toml = toml.replace("[diffusion]\n", "[diffusion]\nlesion_weight = 20.0\nmin_snr_gamma = 5.0\n")
    config = tmp_path / "haar.toml"
    config.write_text(toml)
    summary = paired_train.train(TrainRequest(data=mixed_set, out=tmp_path / "paired-stroke-haar",
                                 config_file=config))  # fmt: skip
    assert summary["autoencoder"]["step"] is None
    bundle = load_bundle(summary["weights"], "stroke", device="cpu")
    model = bundle.model
    assert model.config.representation == "haar" and model.ae is None
    assert model.config.latent_channels == 64 and len(model.config.latent_shift) == 64
    image = torch.rand(1, 1, *GRID, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model.decode(model.encode(image)), image, atol=1e-5, rtol=0)


@pytest.mark.parametrize("lesion", ["stroke", "wmh"])
def test_embedded_weights_load_with_their_representation(lesion):
    """Both representations load: an autoencoder model has its decoder, a Haar one none."""
    from synthbrain.engines.paired.run import load_bundle

    model = load_bundle(None, lesion, device="cpu").model
    assert model.config.representation in ("autoencoder", "haar")
    assert (model.ae is not None) == (model.config.representation == "autoencoder")


def test_a_stopped_diffusion_stage_leaves_loadable_weights(mixed_set, tmp_path, monkeypatch):
    """A diffusion stage stopped (--max-time, SIGTERM) still writes the bundle that generate and
    heal load. The stop is raised right after a tiny stage, as fit raises it, with its summary."""
    from synthbrain import api
    from synthbrain.engines.paired import training
    from synthbrain.engines.paired.run import load_bundle
    from synthbrain.training.stopping import TrainingStopped

    monkeypatch.delenv("SYNTHBRAIN_WEIGHTS", raising=False)
    toml = TINY_TOML.replace("[model]\n", '[model]\nrepresentation = "haar"\nprediction = "v"\n')
    config = tmp_path / "haar.toml"
    config.write_text(toml)
    finish_stage = training._stage_diffusion

    def stage_then_stop(*args):  # noqa: ANN002
        raise TrainingStopped("max-time", {**finish_stage(*args), "stage": "diffusion"})

    monkeypatch.setattr(training, "_stage_diffusion", stage_then_stop)
    summary = api.train(engine="paired", data=mixed_set, out=tmp_path / "run", config_file=config)
    assert summary["stopped"] == "max-time"
    bundle = Path(summary["bundle"])  # where and as a finished run writes it
    assert bundle.parent == tmp_path / "run" and bundle.name.startswith("paired-stroke-")
    model = load_bundle(summary["bundle"], "stroke", device="cpu").model
    assert model.config.representation == "haar"
