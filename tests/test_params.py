import pytest

from cmtlib.params import ParamsError, key_owner, load_params


def test_defaults_follow_the_paper():
    p = load_params()
    assert (p.train.lr, p.train.batch_size, p.train.epochs, p.data.image_size) == (5e-5, 16, 30, 224)
    assert p.model.tasks == ["lung", "disease", "healthy", "multilabel"]


def test_overrides_are_typed():
    p = load_params(None, ["epochs=3", "lr=1e-3", "tasks=[lung,multilabel]", "channels_last=false"])
    assert p.train.epochs == 3 and p.train.lr == pytest.approx(1e-3)
    assert p.model.tasks == ["lung", "multilabel"] and p.train.channels_last is False


def test_unknown_key_is_refused_with_a_suggestion():
    with pytest.raises(ParamsError, match="did you mean epochs"):
        load_params(None, ["epoch=3"])


def test_wrong_type_is_refused():
    with pytest.raises(ParamsError, match="epochs must be an integer"):
        load_params(None, ["epochs=three"])


def test_every_key_has_one_owner():
    owner = key_owner()
    assert owner["epochs"] == "train" and owner["width"] == "model" and owner["image_size"] == "data"


def test_relative_paths_resolve_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = load_params(None, ["data_kind=manifest", "data_root=sub/m.csv"])
    assert p.data.data_root == str(tmp_path / "sub" / "m.csv")


def test_params_file_must_be_flat(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  epochs: 3\n")
    with pytest.raises(ParamsError, match="flat"):
        load_params(f)


def test_base_file_is_read_first_and_overridden(tmp_path):
    (tmp_path / "base.yaml").write_text("epochs: 7\nwidth: 0.25\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "variant.yaml").write_text("base: ../base.yaml\nwidth: 0.5\n")
    p = load_params(tmp_path / "sub" / "variant.yaml")
    assert (p.train.epochs, p.model.width, p.name) == (7, 0.5, "variant")


def test_base_loop_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ParamsError, match="loop"):
        load_params(tmp_path / "a.yaml")


def test_a_page_number_given_alone_becomes_a_one_item_list():
    """`--set report_notebooks=01`: YAML reads 01 as the number 1; it must not be refused."""
    p = load_params(overrides=["report_notebooks=01"])
    assert p.report.report_notebooks == ["1"]
    assert load_params(overrides=["report_notebooks=[01,08]"]).report.report_notebooks == ["1", "08"]
    assert load_params(overrides=["report_notebooks=01_data,03_evaluation"]).report.report_notebooks == ["01_data", "03_evaluation"]
