"""The collection kinds are declared once, by their importers (cmtlib/data/collections/registry.py):
a toy importer registered in ONE module (written here, outside the package) is a `cmt data import`
choice, is found by `auto`, is a valid `data_kind` and has its note on the data page, with no other
file touched; `data_kind: tbx11k` (refused before the registry) prepares data."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from types import SimpleNamespace

import pytest

import import_fuzz_builders as B
from cmtlib.cli import build_parser, main
from cmtlib.data.collections import import_collection, registry
from cmtlib.data.manifest import import_findings, read_manifest
from cmtlib.errors import CmtError, ConfigError

TOY = textwrap.dedent('''
    """A toy collection: a folder holding toy.txt and PNGs named <id>_<finding>.png."""
    from cmtlib.data.collections.common import CollectionResult, SourceStats, base_row, prefixed
    from cmtlib.data.collections.registry import MARKED, NO, CollectionKind, register
    from cmtlib.data.collections.rows import admit_image
    from cmtlib.data.manifest import ManifestError


    def detect(folder):
        return MARKED if (folder / "toy.txt").is_file() else NO


    def find(root):
        found = [d for d in (root, *sorted(p for p in root.iterdir() if p.is_dir())) if detect(d)]
        if not found:
            raise ManifestError(f"no toy collection under {root}")
        return found


    def read(folder, ctx):
        result = CollectionResult(stats=[SourceStats("toy", folder)])
        for path in sorted(folder.glob("*.png")):
            image_id = prefixed("toy", path.stem.split("_")[0])
            size = admit_image(result, ctx, image_id, path, folder, path.name)
            if size is not None:
                finding = path.stem.split("_", 1)[1]
                row = base_row("toy", image_id, path, image_id, finding, ctx.labels(finding))
                row["_size"] = size
                result.rows.append(row)
        return result


    register(CollectionKind("toy", find, read, detect, sources={"toy": "a toy collection of the registry test"}))
''')


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Import the toy module (registering it) into a copy of the registry, restored afterwards."""
    monkeypatch.setattr(registry, "_KINDS", dict(registry.kinds()))
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "toy_kind.py").write_text(TOY)
    spec = importlib.util.spec_from_file_location("toy_kind", tmp_path / "plugin" / "toy_kind.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "toy_kind", module)
    spec.loader.exec_module(module)
    col = tmp_path / "data" / "toys"
    for name in ("t1_normal.png", "t2_pneumonia.png", "t3_bronchiolitis.png"):
        B.png(col / name)
    (col / "toy.txt").write_text("toy\n")
    return col


def _kind_action(parser):
    data = next(a for a in parser._subparsers._group_actions[0].choices["data"]._subparsers._group_actions)
    return next(a for a in data.choices["import"]._actions if a.dest == "kind")


def test_a_toy_kind_is_a_cli_choice_and_imports(toy, tmp_path):
    action = _kind_action(build_parser())
    assert "toy" in action.choices and list(action.choices)[-1] == "auto" and "toy" in list(action.choices)
    out = tmp_path / "out" / "m.csv"
    assert main(["data", "import", "toy", str(toy), "--out", str(out)]) == 0
    df = read_manifest(out).set_index("image_id")
    assert df.loc["toy:t1", ["label_healthy", "label_covid", "label_other"]].tolist() == ["1", "0", "0"]
    assert df.loc["toy:t3", ["label_healthy", "label_covid", "label_other"]].tolist() == ["", "", ""]
    assert import_findings(out)[1]["value"].tolist() == ["bronchiolitis"]


def test_auto_finds_a_toy_collection_beside_a_known_one(toy, tmp_path):
    B.tbx11k(toy.parent)
    out = tmp_path / "out" / "m.csv"
    report = import_collection("auto", toy.parent, out)
    assert report.count_by_source() == {"tbx11k": 4, "toy": 3} and report.not_imported == []


def test_a_toy_kind_is_a_data_kind(toy, tmp_path, monkeypatch):
    from cmtlib.data.prepare import _check_kind, _source_manifest

    data = SimpleNamespace(data_kind="toy", data_root=str(toy), findings=["bronchiolitis=other"])
    _check_kind(data)
    manifest = _source_manifest(data, tmp_path / "prepared")
    labels = read_manifest(manifest).set_index("image_id")["label_other"].to_dict()
    assert labels == {"toy:t1": "0", "toy:t2": "1", "toy:t3": "1"}  # the params' findings reached the import


def test_a_toy_kind_has_its_note_on_the_data_page(toy):
    from cmtlib.report.pages.data import SOURCE_NOTES

    assert SOURCE_NOTES["toy"] == "a toy collection of the registry test" and "figure1" in SOURCE_NOTES


def test_options_are_checked_against_what_each_kind_declares(toy, tmp_path):
    with pytest.raises(CmtError, match="--uncertain is for the chexpert kind only; toy does not read it"):
        import_collection("toy", toy, tmp_path / "m.csv", uncertain="positive")
    with pytest.raises(CmtError, match="--map is for the csv kind only; nih does not read it"):
        import_collection("nih", toy, tmp_path / "m.csv", column_map={"path": "x"})


def test_a_kind_name_is_registered_once(toy):
    kind = registry.kinds()["toy"]
    with pytest.raises(ValueError, match="already defined"):
        registry.register(registry.CollectionKind("toy", kind.find, kind.read))
    with pytest.raises(ValueError, match="already defined"):
        registry.register(registry.CollectionKind("auto", kind.find, kind.read))


def test_data_kind_tbx11k_prepares_data(tmp_path, monkeypatch):
    from cmtlib.data.prepare import prepare_data
    from cmtlib.params import load_params

    monkeypatch.setenv("CMT_DATA_DIR", str(tmp_path / "prepared"))
    B.tbx11k(tmp_path)
    params = load_params(None, ["data_kind=tbx11k", f"data_root={tmp_path / 'tbx'}", "image_size=32", "val_fraction=0.25",
                                "test_fraction=0.25"])
    cache = prepare_data(params)
    index = read_manifest(cache / "index.csv")
    assert sorted(index["image_id"]) == ["tbx11k:h1", "tbx11k:s1", "tbx11k:tb1", "tbx11k:tb2"]


def test_data_kind_refuses_a_kind_that_needs_options(tmp_path):
    from cmtlib.data.prepare import _check_kind

    with pytest.raises(ConfigError, match="csv needs options params cannot give"):
        _check_kind(SimpleNamespace(data_kind="csv", findings=[]))
    with pytest.raises(ConfigError, match="findings 'Bronchiolitis': write TEXT=CLASS"):
        _check_kind(SimpleNamespace(data_kind="nih", findings=["Bronchiolitis"]))


def test_the_kinds_are_the_importer_modules(tmp_path):
    assert registry.kind_names() == ("chexpert", "covidx", "csv", "ieee8023", "nih", "tbx11k", "auto")
    assert registry.data_kinds() == ("chexpert", "covidx", "ieee8023", "nih", "tbx11k", "auto")
    assert registry.source_notes().keys() == {"chexpert", "figure1", "actualmed", "ieee8023", "nih", "tbx11k"}
