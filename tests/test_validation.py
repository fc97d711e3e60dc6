"""The Great Expectations suite: good data passes; each kind of bad data fails, naming the file."""

from pathlib import Path

import pytest
from PIL import Image

from components.config import SplitConfig, ValidationConfig
from components.data.ingest import ingest
from components.data.validation import validate
from tests.conftest import make_folder

CFG = ValidationConfig(min_images_per_class_per_split=1, split_tolerance=0.1)
SPLIT = SplitConfig(train=0.6, val=0.2, test=0.2)


def _run(src: Path, tmp_path: Path, cfg: ValidationConfig = CFG, docs: bool = False):
    out = tmp_path / "staged"
    ingest(src, out, SPLIT)
    return validate(out, cfg, SPLIT, docs_dir=tmp_path / "docs" if docs else None)


def _failed(report) -> dict[str, list[str]]:
    return {f.why: f.examples for f in report.failures}


def test_good_data_passes_and_writes_data_docs(tmp_path):
    report = _run(make_folder(tmp_path / "src"), tmp_path, docs=True)
    assert report.success, [f.line() for f in report.failures]
    assert report.n_images == 30 and report.n_classes == 3 and report.n_expectations == 14
    assert report.data_docs is not None and report.data_docs.exists()
    assert "validation passed: 14/14" in report.summary()


@pytest.mark.parametrize("kind", ["truncated", "not_an_image", "zero_bytes"])
def test_undecodable_files_fail_naming_the_file(tmp_path, kind):
    src = make_folder(tmp_path / "src")
    bad = src / "dog" / "bad.png"
    if kind == "truncated":
        data = (src / "dog" / "img_000.png").read_bytes()
        bad.write_bytes(data[: len(data) - 200])
    elif kind == "not_an_image":
        bad.write_bytes(b"%PDF-1.4 definitely not a png")
    else:
        bad.write_bytes(b"")
    report = _run(src, tmp_path)
    assert not report.success
    examples = _failed(report)["every file decodes"]
    assert len(examples) == 1 and examples[0].endswith("dog/bad.png")


def test_cross_split_duplicate_is_leakage(tmp_path):
    src = make_folder(tmp_path / "src", classes=("a", "b"), splits={"train": 3, "val": 2, "test": 2})
    (src / "test" / "a" / "copy.png").write_bytes((src / "train" / "a" / "train_000.png").read_bytes())
    report = _run(src, tmp_path)
    examples = _failed(report)["no file appears in two splits (leakage)"]
    assert sorted(examples) == ["test/a/copy.png", "train/a/train_000.png"]


def test_duplicate_within_a_split(tmp_path):
    src = make_folder(tmp_path / "src", classes=("a", "b"), splits={"train": 3, "val": 2, "test": 2})
    (src / "train" / "b" / "again.png").write_bytes((src / "train" / "b" / "train_001.png").read_bytes())
    examples = _failed(_run(src, tmp_path))["no file appears twice in one split"]
    assert "train/b/again.png" in examples


def test_class_below_minimum_names_the_cell(tmp_path):
    src = make_folder(tmp_path / "src", classes=("a", "b"), splits={"train": 6, "val": 3, "test": 3})
    for p in list((src / "val" / "b").iterdir())[1:]:
        p.unlink()
    report = _run(src, tmp_path, ValidationConfig(min_images_per_class_per_split=2, split_tolerance=0.2))
    assert _failed(report)["every class has >= 2 images in every split"] == ["val/b"]


def test_class_missing_in_test(tmp_path):
    src = make_folder(tmp_path / "src", classes=("a", "b", "c"), splits={"train": 3, "val": 2, "test": 2})
    for p in (src / "test" / "c").iterdir():
        p.unlink()
    (src / "test" / "c").rmdir()
    report = _run(src, tmp_path)
    assert _failed(report)["every class has >= 1 images in every split"] == ["test/c"]


def test_all_black_image(tmp_path):
    src = make_folder(tmp_path / "src")
    Image.new("RGB", (45, 61), 0).save(src / "owl" / "black.png")
    failed = _failed(_run(src, tmp_path))
    assert failed["pixel std >= 2 (not a blank image)"] == ["{}/owl/black.png".format(_split_of(tmp_path, "black.png"))]
    assert any(e.endswith("owl/black.png") for e in failed["pixel mean within [1, 254]"])


def test_mixed_channels_and_sizes(tmp_path):
    src = make_folder(tmp_path / "src")
    gray = Image.effect_noise((45, 61), 40)
    gray.save(src / "cat" / "gray.png")
    Image.effect_noise((5, 5), 40).convert("RGB").save(src / "cat" / "tiny.png")
    failed = _failed(_run(src, tmp_path))
    # a gray file among RGB ones is converted to the dataset's mode (declared at ingest), not rejected
    assert not any(e.endswith("cat/gray.png") for files in failed.values() for e in files)
    assert "every file converts to the dataset's RGB mode" not in failed
    assert any(e.endswith("cat/tiny.png") for e in failed["width within [8, 4096]"])


def test_revalidation_catches_files_changed_after_ingest(tmp_path):
    out = tmp_path / "staged"
    ingest(make_folder(tmp_path / "src"), out, SPLIT)
    victim = sorted(out.rglob("*.png"))[0]
    Image.effect_noise((45, 61), 50).convert("RGB").save(victim)
    (out / "train" / "cat" / "stray.png").write_bytes(victim.read_bytes())
    failed = _failed(validate(out, CFG, SPLIT))
    assert failed["file bytes match the manifest's sha256"] == [victim.relative_to(out).as_posix()]
    assert failed["every image file is listed in manifest.csv"] == ["train/cat/stray.png"]


def test_split_fractions_far_from_configured(tmp_path):
    out = tmp_path / "staged"
    ingest(make_folder(tmp_path / "src", per_class=20), out, SplitConfig(train=0.5, val=0.25, test=0.25))
    report = validate(out, CFG, SplitConfig(train=0.8, val=0.1, test=0.1))
    assert "split fractions within 0.1 of the configured ones" in _failed(report)


def test_report_caps_the_file_list(tmp_path):
    src = make_folder(tmp_path / "src", per_class=10)
    for i in range(25):
        (src / "cat" / f"junk_{i:02d}.png").write_bytes(b"junk" + bytes([i]))
    report = _run(src, tmp_path, ValidationConfig(min_images_per_class_per_split=1, split_tolerance=0.5, max_reported_files=20))
    decode = next(f for f in report.failures if f.why == "every file decodes")
    assert decode.unexpected_count == 25 and len(decode.examples) == 20 and "(+5 more)" in decode.line()


def _split_of(tmp_path: Path, name: str) -> str:
    return next((tmp_path / "staged").rglob(name)).relative_to(tmp_path / "staged").parts[0]
