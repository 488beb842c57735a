"""Folders of images as compress's training and validation pipelines (``tflowrank compress --data
FOLDER``)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflowrank.image_folders import image_folders

CLASSES = ("cat", "dog", "fox")


def _write(folder, per_class, seed, size=(14, 10)):
    """PNG and JPEG images of three colours (one per class), of a size unlike the model's."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (*size, 3)).astype(np.uint8)
            pixels[..., label] += 180
            encoded = tf.io.encode_png(pixels) if i % 2 else tf.io.encode_jpeg(pixels, quality=95)
            (folder / name / f"{i}.{'png' if i % 2 else 'jpg'}").write_bytes(encoded.numpy())


def _model(outputs=3, channels=3):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, channels))  # as Keras's image classification guide builds it
    x = keras.layers.Rescaling(1 / 255)(keras.layers.RandomFlip("horizontal")(inputs))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(outputs, name="head")(x), name="pets")


def _arrays(dataset):
    pairs = list(dataset.as_numpy_iterator())
    return np.stack([x for x, _ in pairs]), np.array([y for _, y in pairs])


@pytest.fixture(scope="module")
def split_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pets")
    _write(root / "train", 10, seed=0)
    _write(root / "val", 4, seed=1)
    return root


def test_train_and_val_folders_decode_as_keras_does(split_folders):
    model = _model()
    train, val, classes = image_folders(split_folders, model, seed=3)
    assert classes == list(CLASSES)
    assert train.element_spec[0].shape == (8, 8, 3) and train.element_spec[0].dtype == tf.float32
    x_val, y_val = _arrays(val)
    assert x_val.shape == (12, 8, 8, 3) and sorted(y_val) == [0] * 4 + [1] * 4 + [2] * 4
    # the same pixels as keras.utils.image_dataset_from_directory gives, image for image
    keras_val = keras.utils.image_dataset_from_directory(
        str(split_folders / "val"), image_size=(8, 8), batch_size=None, shuffle=False, verbose=False)
    keras_x, keras_y = _arrays(keras_val)
    order = np.lexsort((x_val.reshape(12, -1).sum(1), y_val))
    keras_order = np.lexsort((keras_x.reshape(12, -1).sum(1), keras_y))
    np.testing.assert_array_equal(x_val[order], keras_x[keras_order])
    np.testing.assert_array_equal(y_val[order], keras_y[keras_order])
    # the validation order is the same on every pass; the training order changes
    np.testing.assert_array_equal(_arrays(val)[1], y_val)
    passes = [_arrays(train)[0] for _ in range(2)]
    assert passes[0].shape == (30, 8, 8, 3) and not np.array_equal(*passes)
    assert sorted(map(bytes, passes[0])) == sorted(map(bytes, passes[1]))


def test_samples_are_drawn_from_every_class(split_folders):
    train, val, _ = image_folders(split_folders, _model(), seed=0, train_samples=9, val_samples=6)
    assert len(_arrays(train)[1]) == 9 and len(set(_arrays(train)[1])) == 3
    assert len(_arrays(val)[1]) == 6 and len(set(_arrays(val)[1])) > 1


def test_a_folder_of_class_folders_is_split(tmp_path):
    _write(tmp_path, 10, seed=0)
    train, val, classes = image_folders(tmp_path, _model(), val_split=0.2, seed=1)
    x_train, _ = _arrays(train)
    x_val, _ = _arrays(val)
    assert (len(x_train), len(x_val)) == (24, 6)
    pixels = {bytes(x) for x in x_train} | {bytes(x) for x in x_val}
    assert len(pixels) == 30  # disjoint, and every image in one of them
    again = image_folders(tmp_path, _model(), val_split=0.2, seed=1)[1]
    np.testing.assert_array_equal(_arrays(again)[0], x_val)  # the seed fixes the split


def test_bad_folders_and_models_are_named(split_folders, tmp_path):
    model = _model()
    with pytest.raises(ValueError, match=r"`path` must be a folder of images. Received: path='.*absent'"):
        image_folders(tmp_path / "absent", model)
    with pytest.raises(ValueError, match=r"`val_split` is for a folder of class folders, and '.*' holds "
                                         r"train/ and val/ already. Received: val_split=0.2"):
        image_folders(split_folders, model, val_split=0.2)
    _write(tmp_path / "flat", 2, seed=0)
    with pytest.raises(ValueError, match=r"holds no train/ and val/ .* Received: val_split=None"):
        image_folders(tmp_path / "flat", model)
    with pytest.raises(ValueError, match=r"`val_split` must be a fraction in \(0, 1\). Received: val_split=1.5"):
        image_folders(tmp_path / "flat", model, val_split=1.5)
    with pytest.raises(ValueError, match=r"`model` \('pets'\) has 4 output\(s\), for 4 classes, and "
                                         r"'.*' has 3 class folders: \['cat', 'dog', 'fox'\]"):
        image_folders(split_folders, _model(outputs=4))
    with pytest.raises(ValueError, match=r"`model` \('pets'\) takes \(None, 8, 8, 2\)"):
        image_folders(split_folders, _model(channels=2))
    with pytest.raises(ValueError, match=r"`train_samples` must be a positive integer or None. "
                                         r"Received: train_samples=0"):
        image_folders(split_folders, model, train_samples=0)
    (tmp_path / "mixed" / "train").mkdir(parents=True)
    _write(tmp_path / "mixed" / "train", 2, seed=0)
    (tmp_path / "mixed" / "val" / "cat").mkdir(parents=True)
    (tmp_path / "mixed" / "val" / "cat" / "0.png").write_bytes(
        (split_folders / "val" / "cat" / "1.png").read_bytes())
    with pytest.raises(ValueError, match=r"The training and validation folders name different classes: "
                                         r"\['cat', 'dog', 'fox'\] and \['cat'\]"):
        image_folders(tmp_path / "mixed", model)
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"Could not read images from '.*train': No images found"):
        image_folders(tmp_path / "empty", model)


@pytest.mark.slow
def test_cli_compresses_a_model_trained_on_image_folders(split_folders, tmp_path, capsys):
    from tflowrank import evaluate_tflite
    from tflowrank.cli import main

    model = _model()
    train, val, _ = image_folders(split_folders, model, seed=0)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train.batch(10), epochs=30, verbose=0)
    model.save(tmp_path / "pets.keras")
    before = (tmp_path / "pets.keras").read_bytes()
    status = main(["compress", str(tmp_path / "pets.keras"), "--data", str(split_folders), "--target", "0.5",
                   "-o", str(tmp_path / "out"), "--epochs", "1", "--candidates", "3",
                   "--search-samples", "20", "--runs", "2", "--repeats", "1"])
    assert status == 0
    assert f"3 classes in '{split_folders}': cat, dog, fox" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    int8 = tmp_path / "out" / "model_int8.tflite"
    assert report["tflite_accuracy"] == pytest.approx(evaluate_tflite(int8, val.batch(5)))
    assert report["baseline_accuracy"] > 0.9  # the colours are easy: the model learned them
    assert (tmp_path / "pets.keras").read_bytes() == before
    assert main(["compress", str(tmp_path / "pets.keras"), "--data", str(split_folders), "--target", "0.5",
                 "-o", str(tmp_path / "out2"), "--val-split", "0.2"]) == 2
    assert "`val_split` is for a folder of class folders" in capsys.readouterr().err


def test_calibration_images_come_from_anywhere_under_a_folder(split_folders, tmp_path):
    from tflowrank.image_folders import calibration_images

    model = _model()
    images = calibration_images(split_folders, model, samples=20, seed=0)
    assert images.shape == (20, 8, 8, 3) and images.dtype == np.float32 and images.max() <= 255
    assert len({int(np.argmax(image.mean((0, 1)))) for image in images}) == 3  # every class's colour
    everything = calibration_images(split_folders, model, samples=1000)
    assert len(everything) == 42  # train and val, 14 images of each class
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in list((split_folders / "val" / "dog").iterdir())[:3]:
        (flat / path.name).write_bytes(path.read_bytes())  # no class folders: any image counts
    assert calibration_images(flat, model).shape == (3, 8, 8, 3)
    with pytest.raises(ValueError, match=r"`samples` must be a positive integer. Received: samples=0"):
        calibration_images(flat, model, samples=0)
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match=r"Could not read images from '.*none': No images found"):
        calibration_images(tmp_path / "none", model)


def test_cli_export_calibrates_on_a_folder_of_images(split_folders, tmp_path, capsys):
    from tflowrank.cli import main
    from tflowrank.tflite_model import inspect_tflite

    _model().save(tmp_path / "pets.keras")
    status = main(["export", str(tmp_path / "pets.keras"), "-o", str(tmp_path / "pets.tflite"),
                   "--data", str(split_folders / "train")])
    assert status == 0, capsys.readouterr().err
    assert inspect_tflite(tmp_path / "pets.tflite").is_fully_int8


def test_cli_evaluate_scores_a_tflite_file_on_a_folder_or_arrays(split_folders, tmp_path, capsys):
    from tflowrank import evaluate_tflite, export_tflite
    from tflowrank.cli import main
    from tflowrank.image_folders import labelled_images

    model = _model()
    path = export_tflite(model, tmp_path / "pets.tflite", quantize=None).path
    data, classes = labelled_images(split_folders / "val", (None, 8, 8, 3), 3)
    x, y = (np.stack(a) for a in zip(*data.as_numpy_iterator()))
    assert classes == list(CLASSES) and len(x) == 12
    expected = np.mean(model.predict(x, verbose=0).argmax(-1) == y)
    assert main(["evaluate", str(path), "--data", str(split_folders / "val")]) == 0
    assert f"top-1 {expected:.4f} on 12 samples of" in capsys.readouterr().out
    np.savez(tmp_path / "data.npz", x_val=x, y_val=y)  # no training pair needed to evaluate
    assert main(["evaluate", str(path), "--data", str(tmp_path / "data.npz"), "--samples", "5"]) == 0
    assert f"top-1 {evaluate_tflite(path, x[:5], y[:5]):.4f} on 5 samples of" in capsys.readouterr().out
    assert main(["evaluate", str(path), "--data", str(split_folders)]) == 2  # train/ and val/: 2 classes
    assert "has 3 output(s), for 3 classes, and" in capsys.readouterr().err
