package com.example.tflowrank.fashion

import android.content.res.AssetManager
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** One Fashion-MNIST image: its label (0-9) and height x width grey pixels, row-major. */
class FashionSample(val label: Int, val pixels: ByteArray)

/**
 * Reads assets/fashion_samples.bin, written by android_demo/make_assets.py. Little-endian:
 * the magic "FMS1", uint32 count, uint32 height, uint32 width, then per image one uint8 label and
 * height * width uint8 pixels.
 */
object FashionSamples {
    fun load(assets: AssetManager): List<FashionSample> =
        assets.open(ModelSpec.SAMPLES_FILE).use { decode(it.readBytes()) }

    fun decode(bytes: ByteArray): List<FashionSample> {
        val buffer = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
        val magic = ByteArray(4).also { buffer.get(it) }.toString(Charsets.US_ASCII)
        require(magic == ModelSpec.SAMPLES_MAGIC) { "${ModelSpec.SAMPLES_FILE}: bad magic '$magic'" }
        val count = buffer.int
        val height = buffer.int
        val width = buffer.int
        require(height == ModelSpec.INPUT_SHAPE[1] && width == ModelSpec.INPUT_SHAPE[2]) {
            "${ModelSpec.SAMPLES_FILE} holds ${height}x$width images; the model takes " +
                "${ModelSpec.INPUT_SHAPE[1]}x${ModelSpec.INPUT_SHAPE[2]}"
        }
        require(buffer.remaining() == count * (1 + height * width)) {
            "${ModelSpec.SAMPLES_FILE} is truncated: $count images announced, ${buffer.remaining()} bytes left"
        }
        return List(count) {
            val label = buffer.get().toInt() and 0xFF
            FashionSample(label, ByteArray(height * width).also { buffer.get(it) })
        }
    }
}
