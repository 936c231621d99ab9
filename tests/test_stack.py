"""Stack I/O: formats, bit depths, voxel sizes and clear errors on bad input."""

import pickle

import cv2
import mrcfile
import numpy as np
import pytest
import tifffile

from famous_addon.core.errors import FamousError
from famous_addon.core.stack import open_stack


@pytest.fixture
def volume():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (5, 24, 32), dtype=np.uint8)


def test_imagej_tiff_reads_slices_and_voxel_size(tmp_path, volume):
    path = tmp_path / "s.tif"
    tifffile.imwrite(
        path,
        volume,
        imagej=True,
        resolution=(1 / 0.005, 1 / 0.004),
        metadata={"spacing": 0.02, "unit": "um", "axes": "ZYX"},
    )
    stack = open_stack(path)
    assert stack.shape == (5, 24, 32)
    assert stack.voxel_size_nm == pytest.approx((20.0, 4.0, 5.0))
    assert stack.voxel_source == "metadata: ImageJ"
    for k in range(5):
        np.testing.assert_array_equal(stack.read(k), volume[k])


def test_ome_tiff_voxel_size(tmp_path, volume):
    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(
        path,
        volume,
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 6.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 6.0,
            "PhysicalSizeYUnit": "nm",
            "PhysicalSizeZ": 0.04,
            "PhysicalSizeZUnit": "µm",
        },
    )
    stack = open_stack(path)
    assert stack.voxel_size_nm == pytest.approx((40.0, 6.0, 6.0))
    np.testing.assert_array_equal(stack.read(3), volume[3])


def test_hyperstack_needs_a_channel_and_names_the_one_used(tmp_path, volume):
    data = np.stack([volume, 255 - volume], axis=1)  # Z C Y X
    path = tmp_path / "h.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(
        FamousError, match=r"h\.tif: is a hyperstack with 2 channels.*--channel 0\.\.1"
    ):
        open_stack(path, voxel_size_nm=(10, 5, 5))
    for channel, expected in ((0, volume), (1, 255 - volume)):
        stack = open_stack(path, voxel_size_nm=(10, 5, 5), channel=channel)
        assert stack.shape == (5, 24, 32)
        np.testing.assert_array_equal(stack.read(2), expected[2])
        assert f"channel {channel} of 2 used" in stack.notes
        # a worker process reopens the same channel
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(stack)).read(3), expected[3])
    with pytest.raises(FamousError, match="has no channel 2"):
        open_stack(path, channel=2)


def test_slices_tagged_as_channels_are_read_as_slices(tmp_path, volume):
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, volume, imagej=True, metadata={"axes": "CYX"})
    stack = open_stack(path, voxel_size_nm=(10, 5, 5))
    assert stack.shape == (5, 24, 32)
    np.testing.assert_array_equal(stack.read(4), volume[4])
    assert any("tagged as channels" in n for n in stack.notes)


def test_truncated_imagej_tiff_is_not_read_as_a_shorter_stack(tmp_path, volume):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, volume, imagej=True, metadata={"axes": "ZYX"})
    data = path.read_bytes()
    for n, cut in enumerate((len(data) // 2, len(data) - 40)):
        part = tmp_path / f"cut{n}.tif"
        part.write_bytes(data[:cut])
        with pytest.raises(FamousError, match=rf"cut{n}\.tif: .*(truncated|cannot be read)"):
            open_stack(part)
    plain = tmp_path / "generic.tif"
    tifffile.imwrite(plain, volume, metadata=None)  # pages only, no shape anywhere
    data = plain.read_bytes()
    (tmp_path / "gcut.tif").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(FamousError, match=r"gcut\.tif: its page chain breaks after page 1"):
        open_stack(tmp_path / "gcut.tif")
    assert open_stack(plain).shape == (5, 24, 32)


def test_nan_and_inf_are_left_out_of_the_window(tmp_path):
    vol = np.random.default_rng(4).uniform(100, 200, (4, 30, 30)).astype(np.float32)
    vol[1, 3, 3] = np.nan
    vol[2, 4, 4] = np.inf
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, vol, photometric="minisblack")
    stack = open_stack(path, voxel_size_nm=(10, 10, 10))
    img = stack.read(1)
    lo, hi = stack.window
    assert 100 <= lo < 102 and 198 < hi <= 200
    assert img[3, 3] == 0 and stack.read(2)[4, 4] == 255
    assert img[10:, 10:].std() > 30  # not blank
    assert any(n.startswith("2 non-finite values") for n in stack.notes)
    vol[:] = np.nan
    tifffile.imwrite(path, vol, photometric="minisblack")
    with pytest.raises(FamousError, match=r"f\.tif: holds no finite grey value"):
        open_stack(path, voxel_size_nm=(10, 10, 10)).read(0)


def test_16bit_is_windowed_to_8bit(tmp_path):
    rng = np.random.default_rng(2)
    vol = rng.integers(1000, 3000, (4, 40, 40)).astype(np.uint16)
    vol[:, 0, 0] = 65000  # a hot pixel must not squash the window
    path = tmp_path / "w.tif"
    tifffile.imwrite(path, vol, photometric="minisblack")
    stack = open_stack(path, voxel_size_nm=(10, 10, 10))
    img = stack.read(1)
    assert img.dtype == np.uint8
    lo, hi = stack.window
    assert 1000 <= lo < 1100 and 2900 < hi <= 3000
    assert img[5:, 5:].min() < 10 and img[5:, 5:].max() > 245
    assert stack.describe()["intensity_window"] == [lo, hi]


def test_folder_of_png_natural_order_and_rgb(tmp_path, volume):
    folder = tmp_path / "slices"
    folder.mkdir()
    for k in range(5):
        rgb = np.repeat(volume[k][..., None], 3, axis=2)
        cv2.imwrite(str(folder / f"img_{k + 1}.png"), rgb)  # img_10 sorts after img_9
    stack = open_stack(folder, voxel_size_nm=(10, 10, 10))
    assert stack.shape == (5, 24, 32)
    np.testing.assert_array_equal(stack.read(4), volume[4])
    assert any("RGB" in n for n in stack.notes)


def test_mrc_voxel_size_from_header(tmp_path):
    vol = np.random.default_rng(3).normal(size=(3, 16, 16)).astype(np.float32)
    path = tmp_path / "t.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(vol)
        mrc.voxel_size = (25.0, 25.0, 50.0)  # Å, x y z
    stack = open_stack(path)
    assert stack.voxel_size_nm == pytest.approx((5.0, 2.5, 2.5))
    assert stack.read(0).dtype == np.uint8


def test_missing_voxel_size_asks_for_it(tmp_path, volume):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, volume)
    stack = open_stack(path)
    with pytest.raises(FamousError, match="voxel-size"):
        stack.require_voxel_size()


def test_mismatched_slices_name_the_file(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    cv2.imwrite(str(folder / "s0.png"), np.zeros((10, 10), np.uint8))
    cv2.imwrite(str(folder / "s1.png"), np.zeros((12, 10), np.uint8))
    with pytest.raises(FamousError, match="s1.png"):
        open_stack(folder)


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FamousError, match="no .tif"):
        open_stack(tmp_path / "empty")
    with pytest.raises(FamousError, match="not found"):
        open_stack(tmp_path / "nope.tif")


def test_truncated_tiff_is_caught_before_reading(tmp_path, volume):
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, volume)
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) - 200])
    with pytest.raises(FamousError, match=r"cut\.tif.*(truncated|cannot be read)"):
        open_stack(cut)


def test_not_a_tiff(tmp_path):
    path = tmp_path / "x.tif"
    path.write_text("hello")
    with pytest.raises(FamousError, match="x.tif"):
        open_stack(path)


def test_slice_with_neighbours_stands_in_at_the_ends(tmp_path, volume):
    tifffile.imwrite(tmp_path / "s.tif", volume)
    stack = open_stack(tmp_path / "s.tif", voxel_size_nm=(10, 10, 10))
    np.testing.assert_array_equal(stack.read_with_neighbours(2), volume[1:4].transpose(1, 2, 0))
    np.testing.assert_array_equal(
        stack.read_with_neighbours(0), volume[[0, 0, 1]].transpose(1, 2, 0)
    )
    np.testing.assert_array_equal(
        stack.read_with_neighbours(4), volume[[3, 4, 4]].transpose(1, 2, 0)
    )


def test_slices_read_in_order_with_neighbours_are_read_once(tmp_path, volume):
    tifffile.imwrite(tmp_path / "s.tif", volume)
    stack = open_stack(tmp_path / "s.tif", voxel_size_nm=(10, 10, 10))
    reads = []
    read = stack._reader.read
    stack._reader.read = lambda k: reads.append(k) or read(k)
    for k in range(len(volume)):
        np.testing.assert_array_equal(
            stack.read_with_neighbours(k),
            volume[[max(k - 1, 0), k, min(k + 1, len(volume) - 1)]].transpose(1, 2, 0),
        )
    assert sorted(reads) == list(range(len(volume)))
    # a worker gets the stack without the kept slices
    assert pickle.loads(pickle.dumps(stack))._recent == {}
