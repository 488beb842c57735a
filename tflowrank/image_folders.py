"""``image_folders``: a folder of images, one subfolder per class, as the training and validation
``tf.data`` pipelines ``compress`` reads (``tflowrank compress --data DIR``).

Two layouts, the ones ``keras.utils.image_dataset_from_directory`` serves (and its file
extensions: .bmp, .gif, .jpeg, .jpg, .png):

- ``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` (or ``validation/`` or ``test/``);
- ``DIR/<class>/*`` with ``val_split``: that fraction of the files, drawn with ``seed``, is the
  validation set.

Images are decoded and resized to the model's input height and width (bilinear), as grayscale,
RGB or RGBA after its channel count, and given as float32 pixels in ``[0, 255]``: the model does
its own scaling (a ``Rescaling`` layer), as when it was trained on the same folders. Labels are
the class folders' indices in alphabetical order; the training and validation folders must name
the same classes, as many as the model has outputs (two for one output).
"""

from pathlib import Path

__all__ = ["calibration_images", "image_folders", "labelled_images"]

VAL_FOLDERS = ("val", "validation", "test")
_CHANNELS = {1: "grayscale", 3: "rgb", 4: "rgba"}


def image_folders(path, model, val_split=None, seed=0, train_samples=None, val_samples=None):
    """Return ``(train, val, class_names)``: two unbatched ``tf.data.Dataset`` of ``(image,
    label)`` for ``model``'s input, and the class names.

    The files of each set are put in an order drawn with ``seed`` (so ``train_samples`` /
    ``val_samples`` keep a sample of every class, not the first classes); the training set is
    shuffled again on every pass, the validation set is read in the same order every time. Only
    file names are held in memory; images are decoded as they are read.

    Raises:
        ValueError: a missing or empty folder, a layout that needs ``val_split`` (or one given
            with train / val folders), classes that differ between the two sets or from the
            model's outputs, an input that is not an image's.
    """
    import numpy as np

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"`path` must be a folder of images. Received: path={str(path)!r}")
    for name, value in (("train_samples", train_samples), ("val_samples", val_samples)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be a positive integer or None. Received: {name}={value!r}")
    image = _image_shape(model.inputs[0].shape, f"`model` ({model.name!r})")
    rng = np.random.default_rng(seed)
    val_folder = next((folder / name for name in VAL_FOLDERS if (folder / name).is_dir()), None)
    if (folder / "train").is_dir() and val_folder is not None:
        if val_split is not None:
            raise ValueError(f"`val_split` is for a folder of class folders, and '{folder}' holds "
                             f"train/ and {val_folder.name}/ already. Received: val_split={val_split!r}")
        train, classes = _files(folder / "train", image)
        val, val_classes = _files(val_folder, image)
        if classes != val_classes:
            raise ValueError(f"The training and validation folders name different classes: "
                             f"{classes} and {val_classes}. Received: path={str(path)!r}")
        train, val = (_shuffled(files, rng) for files in (train, val))
    elif val_split is None:
        raise ValueError(
            f"'{folder}' holds no train/ and val/ (or validation/, test/) folders: put the "
            "validation images in a folder of their own, or pass val_split= (the CLI's "
            "--val-split) to hold out a fraction of them. Received: val_split=None")
    else:
        if isinstance(val_split, bool) or not isinstance(val_split, float) or not 0 < val_split < 1:
            raise ValueError(f"`val_split` must be a fraction in (0, 1). Received: val_split={val_split!r}")
        files, classes = _files(folder, image)
        files = _shuffled(files, rng)
        held = int(round(val_split * len(files[0])))
        if not 0 < held < len(files[0]):
            raise ValueError(f"val_split={val_split} of the {len(files[0])} images in '{folder}' "
                             f"leaves {held} for validation. Received: val_split={val_split!r}")
        train, val = (files[0][held:], files[1][held:]), (files[0][:held], files[1][:held])
    _check_classes(classes, int(model.outputs[0].shape[-1]), f"`model` ({model.name!r})", folder)
    return (_dataset(train, train_samples, image, seed), _dataset(val, val_samples, image, None),
            classes)


def calibration_images(path, model, samples=500, seed=0):
    """Up to ``samples`` images from anywhere under the folder ``path`` (class folders or not),
    drawn with ``seed``, decoded and resized for ``model``'s input as ``image_folders`` does: a
    float32 array ``(N, height, width, channels)`` of pixels in ``[0, 255]``, for int8
    calibration or the ``"output"`` method.

    Raises:
        ValueError: ``path`` is not a folder or holds no image, ``samples`` is not a positive
            integer, the model's input is not an image's.
    """
    import numpy as np

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"`path` must be a folder of images. Received: path={str(path)!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"`samples` must be a positive integer. Received: samples={samples!r}")
    image = _image_shape(model.inputs[0].shape, f"`model` ({model.name!r})")
    paths = _listed(folder, image, labels=None).file_paths
    paths = np.array(paths)[np.random.default_rng(seed).permutation(len(paths))]
    images = _dataset((paths, np.zeros(len(paths), np.int32)), samples, image, None)
    return np.stack([x for x, _ in images.as_numpy_iterator()])


def labelled_images(path, input_shape, outputs, samples=None, seed=0, who="the model"):
    """``(dataset, class_names)``: the images under ``path``'s class folders as an unbatched
    ``tf.data.Dataset`` of ``(image, label)`` for a model (``who``, in errors) taking
    ``input_shape`` (``(batch, height, width, channels)``) with ``outputs`` outputs, decoded as
    ``image_folders`` does, in an order drawn with ``seed`` and the same on every pass;
    ``samples``: only that many files."""
    import numpy as np

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"`path` must be a folder of class folders. Received: path={str(path)!r}")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ValueError(f"`samples` must be a positive integer or None. Received: samples={samples!r}")
    image = _image_shape(input_shape, who)
    files, classes = _files(folder, image)
    _check_classes(classes, outputs, who, folder)
    return _dataset(_shuffled(files, np.random.default_rng(seed)), samples, image, None), classes


def _check_classes(classes, outputs, who, folder):
    """Refuse class folders that are not one per output of the model (two for one output)."""
    if len(classes) != max(outputs, 2):
        raise ValueError(f"{who} has {outputs} output(s), for {max(outputs, 2)} classes, and "
                         f"'{folder}' has {len(classes)} class folders: {classes}.")


def _image_shape(shape, who):
    shape = tuple(shape)
    if len(shape) != 4 or shape[-1] not in _CHANNELS or None in shape[1:]:
        raise ValueError(f"Image folders feed a model with an input of shape (None, height, width, "
                         f"1, 3 or 4 channels), and {who} takes {shape}.")
    return tuple(int(d) for d in shape[1:])


def _files(folder, image):
    """``((paths, labels), class_names)`` of the images under ``folder``'s class folders, listed
    as ``keras.utils.image_dataset_from_directory`` lists them (its extensions and order)."""
    import numpy as np

    listed = _listed(folder, image)
    classes = list(listed.class_names)
    paths = np.array(listed.file_paths)
    labels = np.array([classes.index(Path(p).relative_to(folder).parts[0]) for p in paths], np.int32)
    return (paths, labels), classes


def _listed(folder, image, labels="inferred"):
    """The unshuffled, unread dataset ``keras.utils.image_dataset_from_directory`` makes of
    ``folder`` (its ``file_paths`` and ``class_names``)."""
    import keras

    try:
        return keras.utils.image_dataset_from_directory(
            str(folder), labels=labels, batch_size=None, image_size=image[:2],
            color_mode=_CHANNELS[image[2]], shuffle=False, verbose=False)
    except ValueError as error:  # "No images found in directory ..." and the like
        raise ValueError(f"Could not read images from '{folder}': {error}") from error


def _shuffled(files, rng):
    order = rng.permutation(len(files[0]))
    return files[0][order], files[1][order]


def _dataset(files, samples, image, seed):
    """Images decoded and resized as Keras's folder loader does; ``seed``: shuffled on every pass."""
    import tensorflow as tf

    paths, labels = (a[:samples] for a in files)
    height, width, channels = image

    def load(path, label):
        decoded = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        resized = tf.image.resize(decoded, (height, width), method="bilinear")
        return tf.ensure_shape(resized, image), label

    data = tf.data.Dataset.from_tensor_slices((paths, labels))
    if seed is not None:
        data = data.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    return data.map(load, num_parallel_calls=tf.data.AUTOTUNE)
