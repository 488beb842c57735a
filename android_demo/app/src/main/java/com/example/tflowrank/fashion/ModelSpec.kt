package com.example.tflowrank.fashion

/**
 * The contract between this app and the model `tflowrank export` writes: the one place it is
 * written. tests/test_android_demo.py (in the tflowrank repository) parses these constants and
 * checks them against an export of the Fashion-MNIST CNN, and app/build.gradle.kts reads
 * MODEL_FILE from here. Keep each on one line, in this form.
 *
 * The model is int8 inside, with float32 input and output (`tflowrank export --quantize int8`
 * without `--int8-io`): the app feeds pixels scaled to [0, 1], as `tflowrank.zoo.prepare_images`
 * does, and reads 10 logits.
 */
object ModelSpec {
    const val MODEL_FILE = "model_int8.tflite"
    val INPUT_SHAPE = intArrayOf(1, 28, 28, 1)
    const val INPUT_DTYPE = "float32"
    val OUTPUT_SHAPE = intArrayOf(1, 10)
    const val OUTPUT_DTYPE = "float32"

    /** Sample images written by android_demo/make_assets.py; format in FashionSamples.kt. */
    const val SAMPLES_FILE = "fashion_samples.bin"
    const val SAMPLES_MAGIC = "FMS1"

    /** Output index -> name, as tflowrank.datasets.CLASS_NAMES. */
    val CLASS_NAMES = arrayOf("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
}
