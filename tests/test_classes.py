"""Class configs: presets, TOML, obj.names, polarity estimation and validation."""

import numpy as np
import pytest

from famous_addon.core.boxes import Box
from famous_addon.core.classes import (
    estimate_polarity,
    load_classes,
    preset,
    save_classes,
)
from famous_addon.core.errors import FamousError


def test_presets_have_the_papers_classes():
    fib = preset("fibsem")
    assert fib.names == ["early_endosome", "late_endosome", "mitochondria", "lysosome", "nucleus"]
    assert fib[0].extract.polarity == "light" and fib[2].extract.polarity == "dark"
    assert fib[3].extract.method == "ellipse"
    assert len(preset("yeast")) == 7


def test_toml_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    save_classes(preset("yeast"), path)
    again = load_classes(path)
    assert again.classes == preset("yeast").classes


def test_obj_names_take_preset_recipes_and_report_unknown(tmp_path):
    path = tmp_path / "obj.names"
    path.write_text("Mitochondria\nEarly endosomes\ncristae_blob\n")
    cfg = load_classes(path)
    assert cfg.names == ["Mitochondria", "Early endosomes", "cristae_blob"]
    assert cfg[1].extract.polarity == "light"
    assert any("cristae_blob" in n for n in cfg.notes)


def test_polarity_estimated_from_boxes():
    img = np.full((60, 60), 120, np.uint8)
    img[10:20, 10:20] = 230  # light object, class 0
    img[35:50, 35:50] = 20  # dark object, class 1
    boxes = [Box(0, 7, 7, 16, 16), Box(1, 31, 31, 23, 23)]
    assert estimate_polarity([img], [boxes]) == {0: "light", 1: "dark"}


@pytest.mark.parametrize(
    "body, message",
    [
        ('[[class]]\nname = "a"\n[class.extract]\nmethod = "magic"\n', "method 'magic' is unknown"),
        ('[[class]]\nname = "a"\n[[class]]\nname = "a"\n', "appears twice"),
        ('[[class]]\nname = "a"\ncolor = "red"\n', "not a hex colour"),
        ('[[class]]\nname = "a"\n[class.extract]\nblurr_nm = 3\n', "unknown key"),
        ("name = 'x'\n", "no classes"),
        ("[[class]\n", "not valid TOML"),
    ],
)
def test_bad_configs_give_clear_errors(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(FamousError, match=message) as err:
        load_classes(path)
    assert "bad.toml" in str(err.value)


def test_class_count_mismatch():
    with pytest.raises(FamousError, match="has 3 classes but the class config has 5"):
        preset("fibsem").check_count(3, "the model", "model.cfg")
