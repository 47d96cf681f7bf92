"""Validation of generate / heal / implant / enhance inputs, done before anything is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthbrain.errors import InputError
from synthbrain.io.atomic import check_writable
from synthbrain.io.paths import check_output_file, find_brats_contrast, is_phantom_masks, stem


@dataclass
class EditInputs:
    """A validated scan (and mask) with the output path it will be written to."""

    scan: Any  # synthbrain.io.nifti.Volume
    mask: Any | None
    out: Path
    images: dict[str, Any] = field(default_factory=dict)  # contrast -> Volume, the scan included


@dataclass
class EnhanceInputs:
    """Validated T1, T2 and FLAIR volumes and the outputs to write."""

    t1: Any
    t2: Any
    flair: Any
    out: Path
    mask_out: Path | None
    ignored: list[Path] = field(default_factory=list)


def load_mask_for(scan, mask_path: Path, *, resample_mask: bool, label: bool):  # noqa: ANN001, ANN201
    """Load a lesion mask and bring it onto the scan's grid (or refuse a different grid)."""
    from synthbrain.io.nifti import load_volume
    from synthbrain.io.validate import check_same_grid, resample_mask_to

    mask = load_volume(mask_path, kind="label" if label else "mask", label=label)
    if resample_mask:
        try:
            check_same_grid(scan, mask)
        except InputError:
            mask = resample_mask_to(scan, mask)
    else:
        check_same_grid(scan, mask)
    return mask


def check_edit(
    *,
    scan: Path,
    mask: Path | None,
    command: str,
    engine: str,
    out: Path | None = None,
    overwrite: bool = False,
    resample_mask: bool = False,
    label: bool = False,
    severity: float | None = None,
    variants: int = 1,
    images: dict[str, Path] | None = None,
    contrast: str = "t1",
    resample: bool = False,
    lesion: str | None = None,
    weights: str | None = None,
    **options: Any,
) -> EditInputs:
    """Validate heal/implant inputs: readable scan, binary mask on its grid, a safe output path.

    Options the api was not given are absent (or None); one that the engine does not read is an
    error (see synthbrain.engines.options), as is a --lesion that disagrees with --weights.
    """
    from synthbrain import engines
    from synthbrain.io.nifti import load_volume
    from synthbrain.io.validate import require_nonempty_mask

    engines.check_name(engine)
    check_engine_options(engine, command, {"severity": severity, **options})
    check_severity(severity, options.get("eta"))
    check_variants(variants)
    check_lesion(engine, lesion, weights)
    image = load_volume(scan, kind="image")
    mask_volume = None
    if mask is not None:
        mask_volume = load_mask_for(image, mask, resample_mask=resample_mask, label=label)
        if command == "implant":
            require_nonempty_mask(mask_volume, mask)
    volumes = load_contrasts(image, contrast, images or {}, resample=resample)
    suffix = "healed" if command == "heal" else "implant"
    target = Path(out) if out is not None else Path.cwd() / f"{stem(scan)}_{suffix}.nii.gz"
    target = check_output_file(target, [scan, mask, *(images or {}).values()], overwrite)
    return EditInputs(scan=image, mask=mask_volume, out=target, images=volumes)


def load_contrasts(scan, contrast: str, extra: dict[str, Path], *, resample: bool) -> dict:  # noqa: ANN001
    """The scan and the --image contrasts, validated onto the scan's grid."""
    from synthbrain.io.geometry import resample_to
    from synthbrain.io.nifti import load_volume
    from synthbrain.io.validate import check_same_grid

    known = ("t1", "t1gd", "t2", "flair")
    volumes = {contrast: scan}
    for name, path in extra.items():
        if name not in known or name in volumes:
            why = "given twice" if name in volumes else f"unknown; use {', '.join(known)}"
            raise InputError(f"contrast {name!r} {why}", path)
        volume = load_volume(path, kind="image")
        if resample:
            try:
                check_same_grid(scan, volume, what=name)
            except InputError:
                volume = resample_to(volume, scan.shape, scan.affine, order=1, header=scan.header)
        else:
            check_same_grid(scan, volume, what=name)
        volumes[name] = volume
    return volumes


def check_generate(*, out: Path, engine: str, overwrite: bool = False, resume: bool = False,
                   n: int = 1, batch_size: int = 1, anatomy: Path | None = None,
                   masks: Path | None = None, severity: float | None = None,
                   variants: int | None = None, **options: Any) -> None:  # fmt: skip
    """Validate generate's options and output folder before the engine runs."""
    from synthbrain import engines

    engines.check_name(engine)
    given = {"anatomy": anatomy, "severity": severity, "variants": variants, **options}
    check_engine_options(engine, "generate", given)
    check_severity(severity, options.get("eta"))
    if n < 1 or batch_size < 1:
        raise InputError("--n and --batch-size must be at least 1")
    if variants is not None:
        check_variants(variants)
    if anatomy is not None and not Path(anatomy).is_dir():
        raise InputError("--anatomy must be a folder of NIfTI files", anatomy)
    if masks is not None and not (Path(masks).is_dir() or is_phantom_masks(masks)):
        raise InputError("--masks must be a folder of NIfTI files or 'phantom'", masks)
    if options.get("lesion_volume") is not None:
        from synthbrain.io.volume_range import parse_volume_range

        parse_volume_range(options["lesion_volume"])
        if masks is not None and not is_phantom_masks(masks):
            raise InputError("--lesion-volume draws lesions in range: use it without --masks or "
                             "with --masks phantom, not with a folder of masks", masks)  # fmt: skip
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError("output exists and is not a folder", out)
    check_writable(out, folder=True, what="run folder")


def check_engine_options(engine: str, command: str, options: dict[str, Any]) -> None:
    """Refuse an option the engine does not read (see synthbrain.engines.options)."""
    from synthbrain.engines.options import check_options

    check_options(engine, command, options)


MAX_VARIANTS = 64  # lesions per mask in one call: beyond this it is a typo, not a request


def check_variants(variants: int) -> None:
    """--variants K in [1, MAX_VARIANTS]."""
    if not 1 <= int(variants) <= MAX_VARIANTS:
        raise InputError(f"--variants must lie in [1, {MAX_VARIANTS}], got {variants}")


def check_severity(severity: float | None, eta: float | None = None) -> None:
    """A severity s in [0, 2] (x = x_sub + s·S·r: 0 = no deviation, 1 = as drawn); eta ≥ 0."""
    if severity is not None and not 0.0 <= float(severity) <= 2.0:
        raise InputError(f"--severity must lie in [0, 2], got {severity}")
    if eta is not None and float(eta) < 0.0:
        raise InputError(f"--eta must be at least 0, got {eta}")


def weights_lesion(weights: str) -> str | None:
    """The lesion a registry name or weights file was trained for (None if it does not say)."""
    from synthbrain import weights as registry

    if Path(weights).expanduser().is_file():
        config = registry.read_metadata(Path(weights).expanduser()).get("config")
        return config.get("lesion") if isinstance(config, dict) else None
    entry = registry.registry().get(str(weights))
    return entry.lesion if entry is not None else None  # an unknown name fails when loaded


def check_lesion(engine: str, lesion: str | None, weights: str | None) -> None:
    """--lesion picks the engine's registered weights for that lesion; --weights wins, and the
    two together must agree (else an error, not a silent choice)."""
    from synthbrain import weights as registry

    if lesion is None:
        return
    if weights is None:
        registry.entry_for_lesion(engine, lesion)  # unknown: lists the lesions there are
        return
    theirs = weights_lesion(weights)
    if theirs is not None and theirs != lesion:
        raise InputError(
            f"--weights {weights} is for lesion {theirs!r} but --lesion is {lesion!r}; "
            "give one of the two"
        )


def check_enhance(
    *,
    subject: Path | None = None,
    t1: Path | None = None,
    t2: Path | None = None,
    flair: Path | None = None,
    out: Path | None = None,
    mask_out: Path | None = None,
    register: bool = False,
    overwrite: bool = False,
    **_: Any,
) -> EnhanceInputs:
    """Validate enhance inputs: all three contrasts, one grid (or --register), safe outputs, and
    T2 / FLAIR lining up with T1 (`spatial.agreement`: refuses another subject's scans)."""
    from synthbrain.io.nifti import load_volume
    from synthbrain.io.validate import check_same_grid

    given = {"t1": t1, "t2": t2, "flair": flair}
    ignored: list[Path] = []
    if subject is not None:
        if not Path(subject).is_dir():
            raise InputError("not a BraTS subject folder", subject)
        for contrast in given:
            given[contrast] = given[contrast] or find_brats_contrast(subject, contrast)
        t1gd = find_brats_contrast(subject, "t1gd")
        ignored = [t1gd] if t1gd is not None else []
    missing = [name for name, path in given.items() if path is None]
    if missing:
        where = f" in {subject}" if subject is not None else ""
        raise InputError(f"missing contrast(s){where}: {', '.join(missing)} (give --{missing[0]})")
    volumes = {name: load_volume(path, kind="image") for name, path in given.items()}
    if not register:
        for name in ("t2", "flair"):
            check_same_grid(volumes["t1"], volumes[name], what=name)
    base = stem(given["t1"])
    target = Path(out) if out is not None else Path.cwd() / f"{base}_t1gd.nii.gz"
    inputs = [p for p in given.values()]
    target = check_output_file(target, inputs, overwrite)
    mask_target = check_output_file(Path(mask_out), inputs, overwrite) if mask_out else None
    if not register:  # with --register the engine checks after registering
        from synthbrain.spatial.agreement import check_same_subject

        for name in ("t2", "flair"):
            check_same_subject(volumes["t1"], volumes[name], what=name)
    return EnhanceInputs(
        t1=volumes["t1"], t2=volumes["t2"], flair=volumes["flair"], out=target,
        mask_out=mask_target, ignored=ignored,
    )  # fmt: skip
