"""Trainer: Darknet export parity with OpenCV, crop geometry, anchors, a short CPU training."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from famous_addon.core.annotations import write_yolo_mark  # noqa: E402
from famous_addon.core.boxes import Box  # noqa: E402
from famous_addon.core.classes import from_names  # noqa: E402
from famous_addon.core.detector.config import PseudoShare, TrainConfig  # noqa: E402
from famous_addon.core.detector.darknet import check_model, yolo_tiny_cfg  # noqa: E402
from famous_addon.core.detector.data import AugmentConfig, CropSampler, kmeans_anchors  # noqa: E402
from famous_addon.core.detector.inference import load_detector  # noqa: E402
from famous_addon.core.detector.loss import yolo_loss  # noqa: E402
from famous_addon.core.detector.model import (  # noqa: E402
    DarknetTorch,
    decode_head,
    with_neighbour_channels,
)
from famous_addon.core.detector.train import autocast_dtype, train_model, weight_average  # noqa: E402
from famous_addon.core.errors import Cancelled, FamousError  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: small convolutions gain nothing from more, and CI cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ANCHORS = [
    (6, 6),
    (10, 14),
    (16, 12),
    (23, 27),
    (37, 58),
    (81, 82),
    (90, 120),
    (135, 169),
    (344, 319),
]


def _random_net(heads: int, size: int = 96, n_classes: int = 3) -> DarknetTorch:
    torch.manual_seed(0)
    net = DarknetTorch(yolo_tiny_cfg(n_classes, ANCHORS[: 3 * heads], "slim", 1, size, heads))
    with torch.no_grad():
        for block in net.convs():
            if len(block) > 1 and isinstance(block[1], torch.nn.BatchNorm2d):
                bn = block[1]
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.2)
                bn.running_mean.normal_(0, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("heads", [2, 3])
def test_opencv_parity(tmp_path, heads):
    net = _random_net(heads)
    (tmp_path / "model.cfg").write_text(net.cfg_text)
    net.save_weights(tmp_path / "model.weights")
    check_model(tmp_path / "model.cfg", tmp_path / "model.weights")
    tiles = np.random.default_rng(1).integers(0, 256, (2, 96, 96), dtype=np.uint8)
    x = torch.from_numpy(tiles.astype(np.float32)[:, None] / 255)
    with torch.no_grad():
        raws = net(x)
    det = load_detector(tmp_path, backend="cpu")
    # raw outputs of the convolutions that feed each [yolo] layer
    cv_net = det.network(len(tiles))
    cv_net.setInput(x.numpy())
    names = [f"conv_{y['layer'] - 1}" for y in net.info.yolo_layers]
    for raw, cv_raw in zip(raws, cv_net.forward(names)):
        assert np.abs(raw.numpy() - cv_raw).max() <= 1e-3
    # decoded rows through the detector's own path (OpenCV orders rows by y, x, anchor)
    rows = det.forward(tiles)
    ours = []
    for raw, head in zip(raws, net.heads):
        d = decode_head(raw, head, 3, (96, 96)).numpy().transpose(0, 2, 3, 1, 4)
        d = d.reshape(2, -1, d.shape[-1])
        obj = 1 / (1 + np.exp(-d[..., 4]))
        cls = obj[..., None] / (1 + np.exp(-d[..., 5:]))
        ours.append(np.concatenate([d[..., :4] / 96, obj[..., None], cls], -1))
    ours = np.concatenate(ours, 1)
    assert rows.shape == ours.shape
    assert np.abs(rows[..., :5] - ours[..., :5]).max() <= 1e-3
    kept = rows[..., 5:] > 0  # OpenCV zeroes class scores under the cfg's thresh (0.001 here)
    assert np.abs(rows[..., 5:] - np.where(kept, ours[..., 5:], 0)).max() <= 1e-3
    assert (ours[..., 5:][~kept] < 0.0011).all()


def test_weights_round_trip(tmp_path):
    net = _random_net(2)
    net.save_weights(tmp_path / "w.weights")
    other = DarknetTorch(net.cfg_text)
    other.load_weights(tmp_path / "w.weights")
    for (k, a), b in zip(net.layers.state_dict().items(), other.layers.state_dict().values()):
        if "num_batches" not in k:
            assert torch.equal(a, b), k


def test_crops_keep_cut_objects_with_clipped_boxes():
    img = np.full((200, 300), 150, np.uint8)
    img[50:90, 100:220] = 20
    still = AugmentConfig(
        scale=(0.8, 1.25), contrast=(1, 1), brightness=0, gamma=(1, 1), noise=0, blur_p=0
    )
    sampler = CropSampler([img], [np.array([[1, 100, 50, 220, 90]], float)], 96, still)
    rng = np.random.default_rng(0)
    cut = 0
    for _ in range(60):
        x, b = sampler.sample(rng)
        ys, xs = np.nonzero(x < 0.4)
        if len(b) == 0:
            assert len(xs) < 3 * 96  # nothing (or only a sliver under min_box_px) in view
            continue
        assert len(b) == 1 and b[0, 0] == 1
        cx, cy, w, h = b[0, 1:]
        got = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        want = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_allclose(got, want, atol=2.0)
        cut += min(got) <= 0.5 or max(got) >= 95.5
    assert cut >= 5  # objects cut by the crop border were kept


def test_kmeans_anchors_find_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[10, 12], [30, 25], [80, 60]], float)
    wh = np.concatenate([c * rng.uniform(0.9, 1.1, (40, 2)) for c in centres])
    anchors = np.array(kmeans_anchors(wh, 3))
    np.testing.assert_allclose(anchors, centres, rtol=0.12)
    assert len(kmeans_anchors(np.array([[20.0, 20.0]]), 6)) == 6


def _toy(rng, size=128, n=5):
    """Dark ellipses (class 0) and light discs (class 1) on noise."""
    img = np.clip(rng.normal(140, 10, (size, size)), 0, 255).astype(np.uint8)
    boxes = []
    for _ in range(n):
        c = int(rng.integers(2))
        cx, cy = rng.uniform(0, size, 2)
        a, b = (rng.uniform(8, 16), rng.uniform(5, 10)) if c == 0 else (rng.uniform(5, 8),) * 2
        cv2.ellipse(img, (int(cx), int(cy)), (int(a), int(b)), 0, 0, 360, 40 if c == 0 else 230, -1)
        x0, y0 = max(0.0, cx - a), max(0.0, cy - b)
        x1, y1 = min(size, cx + a + 1), min(size, cy + b + 1)
        if x1 - x0 > 3 and y1 - y0 > 3:
            boxes.append(Box(c, x0, y0, x1 - x0, y1 - y0))
    return img, boxes


def _toy_folder(path, seed: int, n: int):
    """A YOLO_mark folder of ``n`` toy slices; returns its images."""
    rng = np.random.default_rng(seed)
    images, boxes = zip(*[_toy(rng) for _ in range(n)])
    write_yolo_mark(
        path, list(images), [f"s_{i}" for i in range(n)], ["dark", "light"], list(boxes)
    )
    return images


def test_a_few_steps_lower_the_loss_and_export_loads(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images, boxes = zip(*[_toy(rng) for _ in range(3)])
    sampler = CropSampler(
        list(images),
        [np.array([(b.cls, b.x, b.y, b.x + b.w, b.y + b.h) for b in bs]) for bs in boxes],
        96,
    )
    wh = np.array([(b.w, b.h) for bs in boxes for b in bs])
    net = DarknetTorch(yolo_tiny_cfg(2, kmeans_anchors(wh, 6), "slim", 1, 96))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    batch = sampler.batch(4, (0, 0))
    losses = []
    for _ in range(30):  # one fixed batch: the loss must fall
        loss, _ = yolo_loss(net, net(batch[0]), batch[1], (96, 96))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    net.eval()
    (tmp_path / "model.cfg").write_text(net.cfg_text)
    net.save_weights(tmp_path / "model.weights")
    det = load_detector(tmp_path, backend="cpu")
    assert np.isfinite(det.forward(np.zeros((1, 96, 96), np.uint8))).all()


@pytest.mark.parametrize("heads", [2, 3])
def test_each_box_is_learned_by_the_head_that_holds_its_anchor(heads):
    # anchors smallest first; the head with the largest (coarsest grid) must
    # learn a box shaped like its anchors, and no other head may
    anchors = [(8, 10), (14, 12), (20, 26), (40, 36), (60, 70), (90, 80), (120, 110)]
    anchors += [(150, 160), (180, 170)]
    net = DarknetTorch(yolo_tiny_cfg(1, anchors[: 3 * heads], "slim", 1, 96, heads=heads))
    raws = [r.detach().requires_grad_() for r in net(torch.zeros(1, 1, 96, 96))]
    for h, head in enumerate(net.heads):
        w, hh = head["anchors"][1].tolist()
        target = torch.tensor([[0, 0, 48.0, 48.0, w, hh]])
        loss, _ = yolo_loss(net, raws, target, (96, 96))
        grads = torch.autograd.grad(loss, raws)
        # the box channels (x, y, w, h of each anchor) learn only at positives
        box = [g.view(1, len(hd["mask"]), -1, *g.shape[2:])[:, :, :4] for g, hd in
               zip(grads, net.heads)]  # fmt: skip
        learned = [bool(b.abs().sum() > 0) for b in box]
        # (a head whose anchor is close in shape may learn it too, as in darknet)
        farthest = 0 if h == len(net.heads) - 1 else len(net.heads) - 1
        assert learned[h] and not learned[farthest], (h, learned)


def test_train_model_writes_a_model_folder_and_resumes(tmp_path):
    images = _toy_folder(tmp_path / "ann", seed=1, n=4)
    classes = from_names(["dark", "light"])
    config = TrainConfig(
        steps_per_epoch=2, batch=2, train_size=64, input_size=96, workers=1, threads=1
    )

    def stop_in_epoch_2(fraction, message):
        if message.startswith("epoch 2/"):
            raise Cancelled()

    with pytest.raises(Cancelled):
        train_model(
            tmp_path / "ann", classes, tmp_path / "m", 3, "slim", stop_in_epoch_2, config=config
        )
    assert (tmp_path / "m" / "checkpoint.pt").is_file()
    report = train_model(
        tmp_path / "ann", classes, tmp_path / "m", 3, "slim", config=config, command="test"
    )
    assert [h["epoch"] for h in report["history"]] == [1, 2, 3]
    assert not (tmp_path / "m" / "checkpoint.pt").exists()
    assert len(report["val_images"]) == 1 and report["command"] == "test"
    for name in (
        "model.cfg",
        "model.weights",
        "obj.names",
        "classes.toml",
        "thresholds.json",
        "report.json",
    ):
        assert (tmp_path / "m" / name).is_file()
    thresholds = json.loads((tmp_path / "m" / "thresholds.json").read_text())["score_thresholds"]
    assert set(thresholds) == {"dark", "light"}
    det = load_detector(tmp_path / "m", classes, "cpu")
    assert isinstance(det(0, images[0]), list)
    assert set(report["metrics"]["per_class"]) == {"dark", "light"}
    # fine-tuning keeps the model's cfg (anchors, width) and starts from its weights
    tuned = TrainConfig(**{**config.__dict__, "init": str(tmp_path / "m")})
    train_model(tmp_path / "ann", classes, tmp_path / "m2", 1, "slim", config=tuned)
    assert (tmp_path / "m2" / "model.cfg").read_text() == (tmp_path / "m" / "model.cfg").read_text()


def test_a_trained_model_carries_the_checksum_of_its_weights(tmp_path):
    _toy_folder(tmp_path / "ann", seed=2, n=2)
    classes = from_names(["dark", "light"])
    config = TrainConfig(
        steps_per_epoch=1, batch=2, train_size=64, input_size=96, workers=1, threads=1
    )
    model = tmp_path / "m"
    train_model(tmp_path / "ann", classes, model, 1, "slim", config=config)
    weights = model / "model.weights"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    # sha256sum's own format, so `sha256sum -c model.weights.sha256` checks it too
    assert (model / "model.weights.sha256").read_text() == f"{digest}  model.weights\n"
    load_detector(model, classes, "cpu")
    # the same network trained on other data: same size, other values
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one parameter changed: the size stays
    weights.write_bytes(bytes(data))
    with pytest.raises(FamousError, match="model.weights: is not the file this model folder"):
        load_detector(model, classes, "cpu")
    # a folder without a checksum (an older FAMOUS, darknet) loads unchecked
    (model / "model.weights.sha256").unlink()
    load_detector(model, classes, "cpu")


@pytest.mark.parametrize("steps, kept", [(30, 2 / 3), (10**6, 0.999)])
def test_weight_average_window_is_a_tenth_of_the_run_at_most_1000_steps(steps, kept):
    net = _random_net(2)
    ema = weight_average(net, total_steps=steps)
    for value in (3.0, 0.0):  # the first update copies, the second averages
        with torch.no_grad():
            for t in net.layers.state_dict().values():
                if t.is_floating_point():
                    t.fill_(value)
        ema.update_parameters(net.layers)
    averaged = ema.module.state_dict()
    assert averaged["1.0.weight"].unique().tolist() == pytest.approx([3.0 * kept])
    assert averaged["1.1.running_var"].unique().tolist() == pytest.approx([3.0 * kept])


def test_exported_weights_are_the_average_and_a_resumed_run_keeps_it(tmp_path):
    _toy_folder(tmp_path / "ann", seed=3, n=3)
    classes = from_names(["dark", "light"])
    config = TrainConfig(
        steps_per_epoch=10, batch=2, train_size=64, input_size=96, workers=1, threads=1
    )

    def weights(name, ema=True, stop=None):
        def stop_at(fraction, message):
            if stop and message.startswith(stop):
                raise Cancelled()

        cfg = TrainConfig(**{**config.__dict__, "ema": ema})
        try:
            train_model(tmp_path / "ann", classes, tmp_path / name, 3, "slim", stop_at, config=cfg)
            assert stop is None, "the run was to be cancelled"
        except Cancelled:
            assert (tmp_path / name / "checkpoint.pt").is_file()
            train_model(tmp_path / "ann", classes, tmp_path / name, 3, "slim", config=cfg)
        return (tmp_path / name / "model.weights").read_bytes()

    last_step, averaged = weights("raw", ema=False), weights("ema")
    assert last_step != averaged
    assert weights("resumed", stop="epoch 2/") == averaged


def _tiny_train_command(tmp_path, *extra: str):
    """``famous train`` of the toy folder ``tmp_path/ann`` into ``tmp_path/m``, one tiny epoch."""
    import argparse

    from famous_addon.commands.detector import add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    return parser.parse_args(
        [
            "train", str(tmp_path / "ann"), "--classes", str(tmp_path / "ann" / "obj.names"),
            "--out", str(tmp_path / "m"), "--epochs", "1", "--steps-per-epoch", "1", "--batch", "2",
            "--train-size", "64", "--input-size", "96", "--threads", "1", "--workers", "1", *extra,
        ]
    )  # fmt: skip


def test_train_command_line(tmp_path, capsys):
    _toy_folder(tmp_path / "ann", seed=2, n=3)
    args = _tiny_train_command(tmp_path, "--zoom-pass", "light=0.9")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "mAP@0.5" in out and "recall by case" in out
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["command"].startswith("famous ") and report["config"]["batch"] == 2
    # the enlarged pass is written with the thresholds, so `famous run` uses it as given
    written = json.loads((tmp_path / "m" / "thresholds.json").read_text())["zoom_pass"]
    assert written["score_thresholds"] == {"light": 0.9} and written["factor"] == 1.5
    assert load_detector(tmp_path / "m", backend="cpu").settings.zoom_thresholds == {1: 0.9}
    for option, message in (("grey=0.9", "not a class of the model"), ("light", "CLASS=SCORE")):
        args.zoom_pass = [option]
        with pytest.raises(FamousError, match=message):
            args.func(args)


def test_training_chooses_the_extraction_recipes_where_the_pixel_size_is_known(tmp_path):
    from famous_addon.core.annotations import SOURCE_NAME, read_yolo_mark
    from famous_addon.core.calibrate import calibrate
    from famous_addon.core.classes import load_classes

    _toy_folder(tmp_path / "ann", seed=3, n=3)
    # the annotation folder says where its slices come from (annotate-pick writes it)
    (tmp_path / "ann" / SOURCE_NAME).write_text('{"voxel_size_nm": [30, 4, 9]}')
    args = _tiny_train_command(tmp_path)
    assert args.func(args) == 0
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert set(report["extraction_calibration"]) == {"dark", "light"}
    # what the model folder's classes.toml holds (and `famous run` reads) is the
    # calibration's choice on the boxes at the pixel size of 6 nm (4 x 9)
    images, boxes = read_yolo_mark(tmp_path / "ann", 2, load_images=True)
    given = load_classes(tmp_path / "ann" / "obj.names", annotations=tmp_path / "ann")
    chosen, facts = calibrate(images, boxes, given, 6.0)
    stored = load_classes(tmp_path / "m" / "classes.toml")
    assert [c.extract for c in stored.classes] == [c.extract for c in chosen.classes]
    assert stored[0].extract != given[0].extract  # the dark toys get another threshold
    assert {k: v["choice"] for k, v in report["extraction_calibration"].items()} == {
        k: v["choice"] for k, v in facts.items()
    }


def test_regions_left_out_of_the_loss_teach_nothing_and_the_rest_is_background():
    net = _random_net(2)
    raws = [r.detach().requires_grad_() for r in net(torch.rand(2, 1, 96, 96))]
    no_boxes = torch.zeros((0, 6))

    def grads(unknown):
        loss, _ = yolo_loss(net, raws, no_boxes, (96, 96), unknown=unknown)
        return torch.autograd.grad(loss, raws)

    # image 0 wholly left out: nothing learnt from it; image 1 is taught background
    for g in grads(torch.tensor([[0, 48.0, 48.0, 96.0, 96.0]])):
        assert g[0].abs().sum() == 0 and g[1].abs().sum() > 0
    # a region x 0-44 on image 1: only the cells whose centre lies in it are left out
    for g in grads(torch.tensor([[1, 22.0, 48.0, 44.0, 96.0]])):
        centres = (torch.arange(g.shape[-1]) + 0.5) * 96 / g.shape[-1]
        inside = centres <= 44
        assert g[1][..., inside].abs().sum() == 0
        assert g[1][..., ~inside].abs().amax(dim=(0, 1)).min() > 0
        assert g[0].abs().sum() > 0


def test_left_out_regions_travel_with_the_crop_and_are_never_boxes():
    image = np.full((128, 128), 60, np.uint8)
    image[30:70, 40:90] = 128  # a pseudo-box
    image[90:110, 10:40] = 255  # a region the first detector saw, unconfirmed
    user = np.zeros((0, 5))
    pseudo = np.array([(0, 40, 30, 90, 70), (-1, 10, 90, 40, 110)], np.float64)
    plain = AugmentConfig(
        scale=(1, 1), contrast=(1, 1), brightness=0, gamma=(1, 1), noise=0, blur_p=0
    )
    for background in (True, False):
        mix = PseudoShare(first=1, share=1.0, background=background)
        sampler = CropSampler([image, image], [user, pseudo], 64, plain, mix)
        x, targets, negatives, unknown = sampler.batch(16, (0, 1))
        assert (targets[:, 1] >= 0).all() and len(unknown) > 0
        assert negatives.tolist() == [1.0 if background else 0.0] * 16
        for b, cx, cy, w, h in unknown.tolist():
            # inside by a pixel: the crop's sub-pixel shift blends the edge pixels
            y0, y1, x0, x1 = (
                int(v) for v in (cy - h / 2 + 1, cy + h / 2 - 1, cx - w / 2 + 1, cx + w / 2 - 1)
            )
            region = x[int(b), 0, y0:y1, x0:x1]
            assert region.numel() > 0 and torch.all(region == 1.0)
    # the region (row 1 of image 1) is never a box to centre crops on
    assert sampler.large == [(1, 0)] and (1, 1) not in sampler.small


def test_neighbour_crops_are_each_slice_cropped_alike():
    rng = np.random.default_rng(4)
    slices = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    boxes = [np.array([(1, 30, 40, 60, 70)], np.float64)]
    plain = AugmentConfig(
        scale=(1, 1), contrast=(1, 1), brightness=0, gamma=(1, 1), noise=0, blur_p=0
    )
    x3, t3 = CropSampler([slices], boxes, 64, plain).sample(np.random.default_rng(9))
    assert x3.shape == (64, 64, 3)
    for c in range(3):
        one = np.ascontiguousarray(slices[..., c])
        x1, t1 = CropSampler([one], boxes, 64, plain).sample(np.random.default_rng(9))
        np.testing.assert_array_equal(x3[..., c], x1)
        np.testing.assert_array_equal(t3, t1)
    batch, *_ = CropSampler([slices], boxes, 64, plain).batch(2, (0, 0))
    assert tuple(batch.shape) == (2, 3, 64, 64)


def test_widened_model_starts_as_the_one_slice_model_and_keeps_parity(tmp_path):
    net = _random_net(2)
    wide = with_neighbour_channels(net).eval()
    assert "channels=3" in wide.cfg_text and "channels=1" in net.cfg_text
    for name, model in (("one", net), ("wide", wide)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.cfg").write_text(model.cfg_text)
        model.save_weights(tmp_path / name / "model.weights")
    one, three = load_detector(tmp_path / "one", backend="cpu"), load_detector(tmp_path / "wide")
    tiles = np.random.default_rng(5).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    middle = np.ascontiguousarray(tiles[..., 1])
    assert np.abs(three.forward(tiles) - one.forward(middle)).max() <= 1e-5
    # once the neighbours' kernels are trained, OpenCV still computes what torch does
    with torch.no_grad():
        wide.convs()[0][0].weight[:, 0].normal_(0, 0.3)
        wide.convs()[0][0].weight[:, 2].normal_(0, 0.3)
        raws = wide(torch.from_numpy(tiles.transpose(0, 3, 1, 2).astype(np.float32) / 255))
    wide.save_weights(tmp_path / "wide" / "model.weights")
    three = load_detector(tmp_path / "wide", backend="cpu")
    three.forward(tiles)  # sets the network input as detection does (channels last to first)
    names = [f"conv_{y['layer'] - 1}" for y in wide.info.yolo_layers]
    for raw, cv_raw in zip(raws, three.network(len(tiles), (96, 96)).forward(names)):
        assert np.abs(raw.numpy() - cv_raw).max() <= 1e-3


def test_training_with_neighbours_from_a_one_slice_model(tmp_path):
    import cv2

    rng = np.random.default_rng(6)
    images, boxes = zip(*[_toy(rng) for _ in range(3)])
    ann = tmp_path / "ann"
    stems = [f"s_{i}" for i in range(3)]
    write_yolo_mark(ann, list(images), stems, ["dark", "light"], list(boxes))
    classes = from_names(["dark", "light"])
    config = TrainConfig(
        steps_per_epoch=2, batch=2, train_size=64, input_size=96, workers=1, threads=1
    )
    train_model(ann, classes, tmp_path / "one", 1, "slim", config=config)
    with_neighbours = TrainConfig(
        **{**config.__dict__, "init": str(tmp_path / "one"), "neighbours": True}
    )
    with pytest.raises(FamousError, match="neighbours.*is missing"):
        train_model(ann, classes, tmp_path / "wide", 1, "slim", config=with_neighbours)
    seen = []
    for image, stem in zip(images, stems):
        shifted = np.roll(image, 2, axis=1)
        seen.append(np.dstack([shifted, image, shifted]))
        (ann / "neighbours").mkdir(exist_ok=True)
        cv2.imwrite(str(ann / "neighbours" / f"{stem}.png"), seen[-1])
    train_model(ann, classes, tmp_path / "wide", 1, "slim", config=with_neighbours)
    assert "channels=3" in (tmp_path / "wide" / "model.cfg").read_text()
    assert json.loads((tmp_path / "wide" / "thresholds.json").read_text())["neighbours"] is True
    det = load_detector(tmp_path / "wide", classes, "cpu")
    assert det.neighbours and isinstance(det(0, seen[0]), list)
    with pytest.raises(FamousError, match=r"needs a \(Y, X, 3\) slices k-1, k, k\+1"):
        det(0, images[0])
    # a neighbours model cannot be fine-tuned on single slices
    back = TrainConfig(**{**config.__dict__, "init": str(tmp_path / "wide")})
    with pytest.raises(FamousError, match="3-channel input; this training gives 1"):
        train_model(ann, classes, tmp_path / "back", 1, "slim", config=back)


def test_small_focus_centres_crops_on_small_boxes():
    from dataclasses import replace

    img = np.full((400, 400), 150, np.uint8)
    big = [(0, x, 300, x + 40, 340) for x in (20, 90, 160, 230, 300)]
    small = (0, 296, 56, 304, 64)  # 8 x 8: under a quarter of the class's median area
    for _, x0, y0, x1, y1 in [*big, small]:
        img[y0:y1, x0:x1] = 20
    still = AugmentConfig(
        scale=(1, 1), contrast=(1, 1), brightness=0, gamma=(1, 1), noise=0, blur_p=0
    )
    boxes = [np.array([*big, small], float)]

    def small_in_middle(sampler, n=40):
        rng = np.random.default_rng(1)
        hits = 0
        for _ in range(n):
            _, b = sampler.sample(rng)
            centred = (np.abs(b[:, 1:3] - 48) <= 24).all(axis=1) & (b[:, 3] <= 8.5)
            hits += bool(centred.any())
        return hits

    focus = CropSampler([img], boxes, 96, replace(still, small_focus=1.0))
    assert focus.small == [(0, 5)]
    assert small_in_middle(focus) == 40
    assert small_in_middle(CropSampler([img], boxes, 96, still)) <= 8


def test_large_focus_crops_hold_whole_large_boxes():
    from dataclasses import replace

    img = np.full((600, 600), 150, np.uint8)
    large = (0, 100, 150, 400, 250)  # 300 px long: a 96 px crop at zoom 1 always cuts it
    small = [(0, x, 450, x + 20, 470) for x in (50, 150, 250)]
    for _, x0, y0, x1, y1 in [large, *small]:
        img[y0:y1, x0:x1] = 20
    still = AugmentConfig(
        scale=(1, 1), contrast=(1, 1), brightness=0, gamma=(1, 1), noise=0, blur_p=0
    )
    boxes = [np.array([large, *small], float)]

    def whole_large(sampler, n=40):
        rng = np.random.default_rng(1)
        hits = 0
        for _ in range(n):
            x, b = sampler.sample(rng)
            # the whole box, zoomed out to 90 % of the crop: 86.4 x 28.8, either way round
            sides = np.sort(b[:, 3:5], axis=1)
            whole = (np.abs(sides - [0.288 * 100, 0.288 * 300]) < 0.5).all(axis=1)
            hits += bool(whole.any())
        return hits

    focus = CropSampler([img], boxes, 96, replace(still, large_focus=1.0))
    assert focus.large == [(0, 0)]
    assert whole_large(focus) == 40
    assert whole_large(CropSampler([img], boxes, 96, still)) == 0


def test_focus_shares_must_be_shares(tmp_path):
    for option in ("small_focus", "large_focus"):
        config = TrainConfig(**{option: 1.5})
        flag = "--" + option.replace("_", "-")
        with pytest.raises(FamousError, match=f"{flag} between 0 and 1"):
            train_model(tmp_path / "none", from_names(["a"]), tmp_path / "m", 1, config=config)


def test_bfloat16_forward_is_close_to_float32_and_a_run_records_it(tmp_path):
    assert autocast_dtype("fp32", "cpu") is None and autocast_dtype("bf16", "cpu") is torch.bfloat16
    with pytest.raises(FamousError, match="--precision auto, fp32 or bf16"):
        autocast_dtype("half", "cpu")
    net = _random_net(2)
    x = torch.rand(2, 1, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = net(x)
        with torch.autocast("cpu", torch.bfloat16):
            low = net(x)
    for a, b in zip(exact, low):
        assert b.dtype == torch.bfloat16
        # bfloat16 keeps 8 bits of mantissa: about 0.4 % per operation
        assert (b.float() - a).abs().max() < 0.05 * a.abs().max()
    _toy_folder(tmp_path / "ann", seed=4, n=3)
    classes = from_names(["dark", "light"])
    written = {}
    for precision in ("fp32", "bf16"):
        config = TrainConfig(
            steps_per_epoch=3, batch=2, train_size=64, input_size=96, workers=1, threads=1,
            precision=precision,
        )  # fmt: skip
        out = tmp_path / precision
        report = train_model(tmp_path / "ann", classes, out, 1, "slim", config=config)
        assert report["forward_dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[precision]
        written[precision] = (out / "model.weights").read_bytes()
    # same seed, same batches: only the forward pass's precision differs
    assert written["fp32"] != written["bf16"]


class _Payload:
    """A pickle that touches a file when loaded: what a crafted checkpoint would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_and_never_run(tmp_path):
    import pickle

    _toy_folder(tmp_path / "ann", seed=1, n=3)
    (tmp_path / "m").mkdir()
    marker = tmp_path / "code_ran"
    with open(tmp_path / "m" / "checkpoint.pt", "wb") as fh:
        pickle.dump({"key": _Payload(marker)}, fh)
    config = TrainConfig(steps_per_epoch=1, batch=2, train_size=64, input_size=96, workers=1)
    with pytest.raises(FamousError, match="checkpoint.pt.*--restart"):
        train_model(
            tmp_path / "ann", from_names(["dark", "light"]), tmp_path / "m", 1, config=config
        )
    assert not marker.exists()
