"""`dist-train prepare arrays | imagefolder | csv` in this process: shards from
files people have on disk, written from real .npy/.npz, PNG/JPEG and CSV files
and read back. (The command line: tests/e2e/test_prepare_sources.py.)"""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from dist_train.data.normalization import normalization_stats
from dist_train.data.prepare import PrepareOptions, prepare
from dist_train.data.shards import iter_blocks, load_manifest, verify_shard
from dist_train.data.sources import split_indices
from dist_train.errors import DistTrainError
from tests.helpers import write_csv


def options(out, **kw):
    return PrepareOptions(out=out, **{"train_shards": 2, "eval_shards": 1, "block_size": 16, **kw})


def read_split(manifest, split):
    blocks = [b for info in manifest.splits[split] for b in iter_blocks(manifest.root / info.file)]
    return np.concatenate([x for x, _ in blocks]), np.concatenate([y for _, y in blocks])


def assert_stored(manifest, inputs, targets, seed=0, val=0.15, test=0.15):
    """The shards hold exactly `inputs`/`targets` split by the built-in sets' seeded split,
    no shard has a problem, and the statistics are the training split's."""
    train, val_idx, test_idx = split_indices(len(inputs), val, test, seed)
    for split, idx in (("train", train), ("val", val_idx), ("test", test_idx)):
        x, y = read_split(manifest, split)
        assert np.array_equal(x, inputs[idx]) and x.dtype == inputs.dtype
        assert np.array_equal(y, targets[idx]) and y.dtype == targets.dtype
        assert all(verify_shard(manifest, info) == [] for info in manifest.splits[split])
    assert manifest.normalization == normalization_stats(inputs[train])
    assert manifest.normalization != normalization_stats(inputs)  # not the whole set's


def digests(root):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def raw_manifest(manifest):
    return json.loads((manifest.root / "manifest.json").read_text())


def nothing_written(tmp_path, *sources):
    """Only the sources are left in tmp_path: no --out, no hidden partial directory."""
    return sorted(p.name for p in tmp_path.iterdir()) == sorted(sources)


# ----------------------------------------------------------------- arrays

@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_arrays_from_npy_files_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    inputs = (np.arange(80)[:, None, None, None] + rng.integers(0, 100, (80, 2, 3, 3))).astype(dtype)
    targets = rng.integers(0, 3, 80).astype(np.int32)
    np.save(tmp_path / "X.npy", inputs)
    np.save(tmp_path / "y.npy", targets)
    m = prepare("arrays", options(tmp_path / "out", inputs=tmp_path / "X.npy", targets=tmp_path / "y.npy"))
    stored = np.uint8 if dtype == np.uint8 else np.float32  # uint8 stays uint8, the rest becomes float32
    assert m.input_shape == (2, 3, 3) and m.input_dtype == np.dtype(stored).name
    assert (m.task, m.num_classes, m.num_outputs, m.class_names, m.target_shape) == ("classification", 3, 3, None, ())
    assert_stored(m, inputs.astype(stored), targets.astype(np.int64))
    # plain classification writes the manifest the earlier format wrote: no new keys
    assert not {"task", "class_names", "target_shape", "num_outputs"} & set(raw_manifest(m))
    assert raw_manifest(m)["source"]["source"] == "arrays"


@pytest.mark.parametrize("target_shape", [(), (2,)])
def test_regression_npz_stores_float32_targets(tmp_path, target_shape):
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(50, 4)).astype(np.float32)
    targets = rng.normal(size=(50, *target_shape))
    np.savez(tmp_path / "data.npz", inputs=inputs, targets=targets)
    m = prepare("arrays", options(tmp_path / "out", inputs=tmp_path / "data.npz"))
    assert (m.task, m.num_classes, m.target_shape) == ("regression", 0, target_shape)
    assert m.num_outputs == (target_shape[0] if target_shape else 1)
    assert_stored(m, inputs, targets.astype(np.float32))
    raw = raw_manifest(m)
    assert (raw["task"], raw["num_classes"], raw["target_shape"], raw["num_outputs"]) == \
        ("regression", 0, list(target_shape), m.num_outputs)
    assert raw["source"]["inputs_key"] == "inputs" and raw["source"]["targets_key"] == "targets"


def test_npz_keys_are_chosen_or_listed(tmp_path):
    inputs, targets = np.arange(40, dtype=np.float32).reshape(20, 2), np.arange(20) % 2
    np.savez(tmp_path / "a.npz", features=inputs, label=targets, extra=targets)
    with pytest.raises(DistTrainError, match=r"holds the arrays features, label, extra.*--inputs-key KEY"):
        prepare("arrays", options(tmp_path / "out", inputs=tmp_path / "a.npz"))
    with pytest.raises(DistTrainError, match=r"--targets-key 'labels' is not in .*a.npz; it holds: features, label"):
        prepare("arrays", options(tmp_path / "out", inputs=tmp_path / "a.npz", inputs_key="features",
                                  targets_key="labels"))
    m = prepare("arrays", options(tmp_path / "out", inputs=tmp_path / "a.npz", inputs_key="features",
                                  targets_key="label", train_shards=1))
    assert_stored(m, inputs, targets.astype(np.int64))
    # integer-valued float targets are regression unless --task says classification
    np.savez(tmp_path / "b.npz", x=inputs, y=targets.astype(np.float64))
    assert prepare("arrays", options(tmp_path / "b", inputs=tmp_path / "b.npz")).task == "regression"
    m = prepare("arrays", options(tmp_path / "c", inputs=tmp_path / "b.npz", task="classification"))
    assert (m.task, m.num_classes) == ("classification", 2)


def test_bad_arrays_are_refused_by_name(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True)
    np.save(tmp_path / "X.npy", np.zeros((20, 3), np.float32))
    np.save(tmp_path / "flat.npy", np.zeros(20, np.float32))
    np.save(tmp_path / "y19.npy", np.zeros(19, np.int64))
    np.save(tmp_path / "neg.npy", np.arange(20) - 1)
    (tmp_path / "text.npy").write_text("1,2,3\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [({"inputs": "obj.npy", "targets": "y19.npy"}, r"obj.npy holds Python objects .* never unpickled"),
             ({"inputs": "X.npy", "targets": "y19.npy"},
              r"X.npy holds 20 samples but .*y19.npy holds targets of shape \(19,\)"),
             ({"inputs": "flat.npy", "targets": "neg.npy"},
              r"flat.npy: inputs must have shape \(N, ...\).*reshape\(-1, 1\)"),
             ({"inputs": "X.npy", "targets": "neg.npy"}, r"neg.npy: target -1 of sample 0 is a negative class index"),
             ({"inputs": "text.npy", "targets": "neg.npy"}, r"text.npy is neither a .npy nor a .npz file"),
             ({"inputs": "X.npy"}, r"give the targets with --targets FILE"),
             ({"inputs": "missing.npy", "targets": "neg.npy"}, r"--inputs .*missing.npy: no such file")]
    for files, message in cases:
        with pytest.raises(DistTrainError, match=message):
            prepare("arrays", options(tmp_path / "out", **{k: tmp_path / v for k, v in files.items()}))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


# ----------------------------------------------------------------- image folders

def image_tree(root):
    """Three classes of PNG and JPEG images of assorted sizes and modes. Returns
    (file, class index, kind, value) in the documented order: class folders
    sorted, then paths inside a class sorted."""
    rng = np.random.default_rng(2)
    made = []

    def save(rel, cls, image, kind, value, **kw):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **kw)
        made.append((rel, cls, kind, value))

    def solid(shape, value, dtype=np.uint8):  # Pillow picks the mode: L, RGB, RGBA, I;16
        return Image.fromarray(np.full(shape, value, dtype))

    exact = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)  # already --image-size: stored as it is
    save("cat/b.png", 0, Image.fromarray(exact), "exact", exact)
    save("cat/a.png", 0, solid((17, 5, 3), (200, 40, 90)), "solid", (200, 40, 90))
    save("cat/sub/c.PNG", 0, solid((3, 30), 77), "solid", (77, 77, 77))
    save("cat/d16.png", 0, solid((9, 9), 51400, np.uint16), "solid", (200, 200, 200))  # 16-bit: scaled, not clipped
    save("dog/x.jpg", 1, solid((40, 24, 3), (10, 120, 250)), "jpeg", (10, 120, 250), quality=95)
    save("dog/y.jpeg", 1, solid((8, 8), 180), "jpeg", (180, 180, 180), quality=95)
    palette = Image.new("P", (9, 7), 1)
    palette.putpalette([0, 0, 0, 60, 70, 80])
    save("dog/p.png", 1, palette, "solid", (60, 70, 80), transparency=0)
    save("emu/z.png", 2, solid((12, 12, 4), (5, 250, 5, 0)), "solid", (5, 250, 5))  # alpha dropped
    halves = np.zeros((4, 8), np.uint8)
    halves[:, 4:] = 255  # left black, right white; EXIF says "rotate 90 degrees clockwise to view"
    exif = Image.fromarray(halves).getexif()
    exif[0x0112] = 6
    save("emu/r.png", 2, Image.fromarray(halves), "upright", None, exif=exif)
    (root / "dog" / ".DS_Store").write_bytes(b"\0junk")  # hidden: skipped
    (root / ".cache").mkdir()  # hidden: not a class
    order = {rel: i for i, rel in enumerate(sorted(r for r, *_ in made))}
    return sorted(made, key=lambda item: order[item[0]])


@pytest.mark.parametrize("color", ["rgb", "grey"])
def test_image_folder_round_trips_resized(tmp_path, color):
    made = image_tree(tmp_path / "src")
    m = prepare("imagefolder", options(tmp_path / "out", source_dir=tmp_path / "src", image_size=(6, 10),
                                       color=color, val_fraction=0.2, test_fraction=0.2, train_shards=1))
    channels = 3 if color == "rgb" else 1
    assert m.input_shape == (channels, 6, 10) and m.input_dtype == "uint8"
    assert (m.task, m.num_classes, m.class_names) == ("classification", 3, ("cat", "dog", "emu"))
    raw = raw_manifest(m)
    assert raw["task"] == "classification" and raw["class_names"] == ["cat", "dog", "emu"]
    assert raw["source"]["image_size"] == [6, 10] and raw["source"]["color"] == color
    # put the stored samples back in file order: the split is the built-in sets' seeded split
    train, val, test = split_indices(len(made), 0.2, 0.2, 0)
    order = np.concatenate([train, val, test])
    xs, ys = zip(*(read_split(m, s) for s in ("train", "val", "test")))
    x, y = np.empty_like(np.concatenate(xs)), np.empty_like(np.concatenate(ys))
    x[order], y[order] = np.concatenate(xs), np.concatenate(ys)
    assert y.dtype == np.int64 and y.tolist() == [cls for _, cls, _, _ in made]
    assert m.normalization == normalization_stats(x[train])
    for image, (rel, _, kind, value) in zip(x, made):
        if kind == "exact":
            grey = np.asarray(Image.fromarray(value).convert("L"))[None]
            expected = value.transpose(2, 0, 1) if color == "rgb" else grey
            assert np.array_equal(image, expected), rel
            continue
        if kind == "upright":  # turned by its EXIF orientation: black on top, white below, each row one shade
            assert (image == image[:, :, :1]).all() and image[:, 0, 0].max() == 0 and image[:, -1, 0].min() == 255
            continue
        if color == "grey":  # Pillow's ITU-R 601-2 luma
            value = (round((value[0] * 299 + value[1] * 587 + value[2] * 114) / 1000),) * 3
        want = np.broadcast_to(np.array(value[:channels], np.int64)[:, None, None], image.shape)
        tolerance = 4 if kind == "jpeg" else 0  # a solid colour stays that colour through a bilinear resize
        assert np.abs(image.astype(np.int64) - want).max() <= tolerance, rel


@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_an_image_that_does_not_decode_is_named_and_nothing_is_written(tmp_path, damage):
    image_tree(tmp_path / "src")
    bad = tmp_path / "src" / "dog" / "broken.png"
    if damage == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:400])
    else:
        bad.write_text("this is not an image\n")
    with pytest.raises(DistTrainError, match=rf"cannot decode image {bad} .* replace or delete the file"):
        prepare("imagefolder", options(tmp_path / "out", source_dir=tmp_path / "src", image_size=(8, 8)))
    assert nothing_written(tmp_path, "src")


def corrupt(path, damage):
    """A file named like an image that does not decode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if damage == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:400])
    else:
        path.write_text("this is not an image\n")
    return path


def test_every_image_that_does_not_decode_is_named_in_one_error(tmp_path):
    image_tree(tmp_path / "src")
    first = corrupt(tmp_path / "src" / "cat" / "sub" / "broken.png", "truncated")
    second = corrupt(tmp_path / "src" / "emu" / "notes.jpg", "text")
    with pytest.raises(DistTrainError) as error:
        prepare("imagefolder", options(tmp_path / "out", source_dir=tmp_path / "src", image_size=(8, 8)))
    message = str(error.value)
    assert message.startswith(f"2 problems in the image tree {tmp_path / 'src'}: cannot decode image {first} (")
    assert f"; cannot decode image {second} (UnidentifiedImageError: " in message
    assert message.endswith("To fix: replace or delete the images that do not decode; then run the command again")
    assert nothing_written(tmp_path, "src") and not (tmp_path / "out").exists()
    first.unlink()  # one left: the message of one bad file
    with pytest.raises(DistTrainError, match=rf"^cannot decode image {second} \(.*\); it is not a readable PNG or "
                                             "JPEG: replace or delete the file, then run the command again$"):
        prepare("imagefolder", options(tmp_path / "out", source_dir=tmp_path / "src", image_size=(8, 8)))
    second.unlink()
    assert prepare("imagefolder", options(tmp_path / "out", source_dir=tmp_path / "src", image_size=(8, 8)))


def test_layout_mistakes_and_broken_images_are_named_together(tmp_path):
    root = tmp_path / "src"
    image_tree(root)
    (root / "cat" / "notes.txt").write_text("about cats")
    (root / "loose.png").write_bytes((root / "cat" / "a.png").read_bytes())
    (root / "empty").mkdir()
    (root / "fox").mkdir()
    (root / "fox" / "readme.md").write_text("a class folder with no image in it")
    broken = corrupt(root / "dog" / "broken.png", "truncated")
    with pytest.raises(DistTrainError) as error:
        prepare("imagefolder", options(tmp_path / "out", source_dir=root, image_size=(8, 8)))
    named = str(error.value).split(": ", 1)[1].split("; ")
    assert str(error.value).startswith(f"6 problems in the image tree {root}: ")
    assert named[:5] == [f"{root / 'loose.png'} lies directly in {root}, where only class folders belong "
                         "(ROOT/<class name>/<image>)",
                         f"{root / 'cat' / 'notes.txt'} is not a PNG or JPEG image (only .png, .jpg, .jpeg files may "
                         "lie in a class folder)",
                         f"class folder {root / 'empty'} holds no images",
                         f"{root / 'fox' / 'readme.md'} is not a PNG or JPEG image (only .png, .jpg, .jpeg files "
                         "may lie in a class folder)",
                         f"class folder {root / 'fox'} holds no images"]
    assert named[5].startswith(f"cannot decode image {broken} (")
    assert str(error.value).endswith(
        f"To fix: move the files lying directly in {root} into class folders or out of it; move the files that are "
        "not PNG or JPEG images out of the tree; add images to the empty class folders or remove them; replace or "
        "delete the images that do not decode; then run the command again")
    assert nothing_written(tmp_path, "src")


def test_more_bad_images_than_one_message_names_are_counted(tmp_path):
    image_tree(tmp_path / "src")
    bad = [corrupt(tmp_path / "src" / "dog" / f"bad{i:02d}.png", "text") for i in range(13)]
    with pytest.raises(DistTrainError) as error:
        prepare("imagefolder", options(tmp_path / "out", source_dir=tmp_path / "src", image_size=(8, 8)))
    message = str(error.value)
    assert message.startswith(f"13 problems in the image tree {tmp_path / 'src'}: ")
    assert [path for path in bad if f"image {path} (" in message] == bad[:10]  # MAX_NAMED, in file order
    assert "; and 3 more. To fix: replace or delete the images that do not decode" in message
    assert nothing_written(tmp_path, "src")


def test_image_folder_layout_mistakes_are_named(tmp_path):
    image_tree(tmp_path / "src")
    (tmp_path / "src" / "cat" / "notes.txt").write_text("about cats")
    with pytest.raises(DistTrainError, match=r"cat/notes.txt is not a PNG or JPEG image"):
        prepare("imagefolder", options(tmp_path / "out", source_dir=tmp_path / "src", image_size=(8, 8)))
    (tmp_path / "src" / "cat" / "notes.txt").unlink()
    (tmp_path / "src" / "loose.png").write_bytes((tmp_path / "src" / "cat" / "a.png").read_bytes())
    with pytest.raises(DistTrainError, match=r"loose.png lies directly in .*src, where only class folders belong"):
        prepare("imagefolder", options(tmp_path / "out", source_dir=tmp_path / "src", image_size=(8, 8)))
    (tmp_path / "src" / "loose.png").unlink()
    (tmp_path / "src" / "empty").mkdir()
    with pytest.raises(DistTrainError, match=r"class folder .*empty holds no images"):
        prepare("imagefolder", options(tmp_path / "out", source_dir=tmp_path / "src", image_size=(8, 8)))
    with pytest.raises(DistTrainError, match=r"needs --image-size H or H,W"):
        prepare("imagefolder", options(tmp_path / "out", source_dir=tmp_path / "src"))
    assert nothing_written(tmp_path, "src")


def test_two_unreadable_array_files_are_named_in_one_error(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True)
    (tmp_path / "y.npy").write_bytes(b"\x93NUMPY" + b"\0" * 3)  # a header, then nothing
    with pytest.raises(DistTrainError) as error:
        prepare("arrays", options(tmp_path / "out", inputs=tmp_path / "obj.npy", targets=tmp_path / "y.npy"))
    assert str(error.value).startswith(f"neither file can be used: {tmp_path / 'obj.npy'} holds Python objects")
    assert f"; and cannot read {tmp_path / 'y.npy'} (" in str(error.value)
    assert nothing_written(tmp_path, "obj.npy", "y.npy")


# ----------------------------------------------------------------- CSV

def test_csv_with_named_classes_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    features = np.round(rng.normal(size=(60, 3)), 4)
    labels = rng.choice(["setosa", "versicolor", "virginica"], 60)
    rows = [["a", "species", "b", "c"]] + [[f[0], lab, f[1], f[2]] for f, lab in zip(features, labels)]
    path = write_csv(tmp_path / "iris.csv", rows[:30] + [[]] + rows[30:])  # a blank line is skipped
    m = prepare("csv", options(tmp_path / "out", csv=path, target="species"))
    names = ("setosa", "versicolor", "virginica")
    assert (m.task, m.num_classes, m.class_names) == ("classification", 3, names)
    assert m.input_shape == (3,) and m.input_dtype == "float32"
    assert_stored(m, features.astype(np.float32), np.array([names.index(v) for v in labels], np.int64))
    assert raw_manifest(m)["class_names"] == list(names)
    assert raw_manifest(m)["source"]["features"] == ["a", "b", "c"]
    # --features picks (and orders) the feature columns
    m = prepare("csv", options(tmp_path / "two", csv=path, target="species", features=("c", "a")))
    assert m.input_shape == (2,) and raw_manifest(m)["source"]["features"] == ["c", "a"]
    assert_stored(m, features[:, [2, 0]].astype(np.float32), np.array([names.index(v) for v in labels], np.int64))


def test_csv_task_follows_the_target_values(tmp_path):
    rng = np.random.default_rng(4)
    x = np.round(rng.normal(size=(40, 2)), 3)
    classes = rng.integers(0, 4, 40)
    prices = np.round(rng.normal(100, 20, 40), 2)
    path = write_csv(tmp_path / "t.csv", [["x1", "x2", "kind", "price"]] +
                     [[a, b, float(c), p] for (a, b), c, p in zip(x, classes, prices)])
    m = prepare("csv", options(tmp_path / "cls", csv=path, target="kind", features=("x1", "x2")))
    assert (m.task, m.num_classes, m.class_names) == ("classification", 4, None)  # whole numbers: class indices
    assert_stored(m, x.astype(np.float32), classes.astype(np.int64))
    m = prepare("csv", options(tmp_path / "reg", csv=path, target="price"))
    assert (m.task, m.num_classes, m.target_shape, m.num_outputs) == ("regression", 0, (), 1)
    assert_stored(m, np.column_stack([x, classes]).astype(np.float32), prices.astype(np.float32))
    m = prepare("csv", options(tmp_path / "reg2", csv=path, target="kind", task="regression"))
    assert m.task == "regression"
    with pytest.raises(DistTrainError, match=rf"column 'price': target {prices[0]} of line 2 is not a class index"):
        prepare("csv", options(tmp_path / "bad", csv=path, target="price", task="classification"))


def test_csv_missing_columns_are_named_with_the_columns_present(tmp_path):
    path = write_csv(tmp_path / "d.csv", [["a", "b", "label"], [1, 2, 0], [3, 4, 1]])
    present = r"the columns are: 'a', 'b', 'label'"
    with pytest.raises(DistTrainError, match=rf"--target: column 'class' is not in .*d.csv; {present}"):
        prepare("csv", options(tmp_path / "out", csv=path, target="class"))
    with pytest.raises(DistTrainError, match=rf"--features: column 'c' is not in .*d.csv; {present}"):
        prepare("csv", options(tmp_path / "out", csv=path, target="label", features=("a", "c")))
    with pytest.raises(DistTrainError, match=rf"needs --target COLUMN; {present}"):
        prepare("csv", options(tmp_path / "out", csv=path))
    semicolons = tmp_path / "s.csv"
    semicolons.write_text("a;b;label\n1;2;0\n")
    with pytest.raises(DistTrainError, match=r"seems to separate by semicolons"):
        prepare("csv", options(tmp_path / "out", csv=semicolons, target="label"))
    assert nothing_written(tmp_path, "d.csv", "s.csv")


def test_csv_bad_cells_name_the_file_line_column_and_value(tmp_path):
    rows = [["a", "b", "label"]] + [[i, i * 2, i % 2] for i in range(20)]
    rows[5][1] = "n/a"  # line 6 of the file
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DistTrainError, match=r"d.csv line 6, column 'b': 'n/a' is not a \(finite\) number"):
        prepare("csv", options(tmp_path / "out", csv=path, target="label"))
    rows[5][1], rows[7][2] = 3, "NA"
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DistTrainError, match=r"column 'label' mixes numbers \(line 2: '0'\) with other values "
                                             r"\(line 8: 'NA'\).*--task classification"):
        prepare("csv", options(tmp_path / "out", csv=path, target="label"))
    with pytest.raises(DistTrainError, match=r"column 'label', line 8: 'NA' is not a \(finite\) number"):
        prepare("csv", options(tmp_path / "out", csv=path, target="label", task="regression"))
    rows[7] = [1, 2]
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DistTrainError, match=r"d.csv line 8 has 2 fields, the header has 3"):
        prepare("csv", options(tmp_path / "out", csv=path, target="label"))
    rows[10] = [1, 2, 3, 4]
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DistTrainError, match=r"d.csv: 2 rows have another number of fields than the header's 3: "
                                             r"line 8 has 2 fields; line 11 has 4 fields; every row needs one value"):
        prepare("csv", options(tmp_path / "out", csv=path, target="label"))
    assert nothing_written(tmp_path, "d.csv")


# ----------------------------------------------------------------- all sources

def make_source(tmp_path, name):
    rng = np.random.default_rng(5)
    if name == "arrays":
        np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 3)), y=rng.normal(size=(40, 2)))
        return {"inputs": tmp_path / "d.npz"}
    if name == "csv":
        return {"csv": write_csv(tmp_path / "d.csv", [["a", "b", "y"]] + [[*rng.normal(size=2), c]
                                                                           for c in rng.choice(["u", "v"], 40)]),
                "target": "y"}
    image_tree(tmp_path / "src")
    return {"source_dir": tmp_path / "src", "image_size": (5, 7), "val_fraction": 0.2, "test_fraction": 0.2,
            "train_shards": 1}


@pytest.mark.parametrize("name", ["arrays", "imagefolder", "csv"])
def test_preparing_twice_gives_byte_identical_files(tmp_path, name):
    kw = make_source(tmp_path, name)
    first = digests(prepare(name, options(tmp_path / "one", **kw)).root)
    again = digests(prepare(name, options(tmp_path / "one", **kw)).root)  # over the existing set
    assert first == again and "manifest.json" in first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial or old directory left


def test_options_of_another_source_are_refused(tmp_path):
    with pytest.raises(DistTrainError, match=r"--image-size is for `prepare imagefolder`, not `prepare csv`"):
        prepare("csv", options(tmp_path / "out", csv=tmp_path / "d.csv", target="y", image_size=(8, 8)))
    with pytest.raises(DistTrainError, match=r"--task is for `prepare arrays / csv`, not `prepare digits`"):
        prepare("digits", options(tmp_path / "out", task="regression"))


@pytest.mark.parametrize("name", ["digits", "synthetic", "csv"])
def test_split_fractions_out_of_range_are_refused_for_every_source(tmp_path, name):
    write_csv(tmp_path / "d.csv", [["a", "y"], *([i, i % 2] for i in range(40))])
    files = {"csv": tmp_path / "d.csv", "target": "y"} if name == "csv" else {}
    cases = [({"val_fraction": 1.5}, r"--val-fraction 1.5 must be at least 0 and below 1"),
             ({"test_fraction": -0.1}, r"--test-fraction -0.1 must be at least 0 and below 1"),
             ({"val_fraction": 0.6, "test_fraction": 0.4}, r"--val-fraction 0.6 \+ --test-fraction 0.4 leave no "
                                                          r"training samples")]
    for fractions, message in cases:
        with pytest.raises(DistTrainError, match=message):
            prepare(name, options(tmp_path / "out", **files, **fractions))
    assert not (tmp_path / "out").exists()  # nothing written


def test_verify_checks_the_targets_against_the_manifest(tmp_path):
    kw = make_source(tmp_path, "arrays")
    m = prepare("arrays", options(tmp_path / "out", **kw))
    raw = raw_manifest(m)
    raw["target_shape"] = [3]  # the shards hold (n, 2)
    (m.root / "manifest.json").write_text(json.dumps(raw))
    problems = verify_shard(load_manifest(m.root), m.splits["train"][0])
    assert len(problems) == 1
    assert "targets (14, 2) float32, expected (n, 3) and (n, 3) float32 (regression)" in problems[0]
