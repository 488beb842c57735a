package com.example.tflowrank.fashion

import android.content.res.AssetManager
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.Environment
import kotlin.math.exp

/** What the model said about one image, and how long `CompiledModel.run` took. */
class Prediction(val label: Int, val probability: Float, val latencyMs: Double)

/**
 * The exported model run with LiteRT's CompiledModel API on the CPU, as the LiteRT guide
 * "CompiledModel Kotlin API" shows it: create the model from the assets, create its input and
 * output buffers once, then write, run, read.
 */
class FashionClassifier(assets: AssetManager) : AutoCloseable {
    private val env = Environment.create()
    private val model =
        CompiledModel.create(assets, ModelSpec.MODEL_FILE, CompiledModel.Options(Accelerator.CPU), env)
    private val inputBuffers = model.createInputBuffers()
    private val outputBuffers = model.createOutputBuffers()
    private val inputSize = ModelSpec.INPUT_SHAPE.fold(1) { n, d -> n * d }
    private val outputSize = ModelSpec.OUTPUT_SHAPE.fold(1) { n, d -> n * d }

    fun classify(sample: FashionSample): Prediction {
        require(sample.pixels.size == inputSize) {
            "an image of ${sample.pixels.size} pixels; the model takes $inputSize"
        }
        // uint8 pixels -> [0, 1], as tflowrank.zoo.prepare_images
        inputBuffers[0].writeFloat(FloatArray(inputSize) { (sample.pixels[it].toInt() and 0xFF) / 255f })
        val start = System.nanoTime()
        model.run(inputBuffers, outputBuffers)
        val latencyMs = (System.nanoTime() - start) / 1e6
        val logits = outputBuffers[0].readFloat()
        check(logits.size == outputSize) { "the model gave ${logits.size} outputs, not $outputSize" }
        val best = logits.indices.maxBy { logits[it] }
        val max = logits[best]
        val total = logits.sumOf { exp((it - max).toDouble()) }
        return Prediction(best, (1.0 / total).toFloat(), latencyMs)
    }

    /** Median latency of `runs` invocations on the last input written, in milliseconds. */
    fun medianLatencyMs(runs: Int = 100): Double {
        val times = DoubleArray(runs) {
            val start = System.nanoTime()
            model.run(inputBuffers, outputBuffers)
            (System.nanoTime() - start) / 1e6
        }
        times.sort()
        return times[runs / 2]
    }

    override fun close() {
        inputBuffers.forEach { it.close() }
        outputBuffers.forEach { it.close() }
        model.close()
        env.close()
    }
}
