package com.example.tflowrank.fashion

import android.app.Activity
import android.graphics.Bitmap
import android.graphics.Color
import android.graphics.drawable.BitmapDrawable
import android.os.Bundle
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.TextView
import kotlin.concurrent.thread

/** Classifies the bundled Fashion-MNIST samples once and lists label, truth and latency. */
class MainActivity : Activity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        val summary = findViewById<TextView>(R.id.summary)
        val results = findViewById<LinearLayout>(R.id.results)

        thread(name = "classify") {
            val outcome = runCatching {
                val samples = FashionSamples.load(assets)
                FashionClassifier(assets).use { classifier ->
                    classifier.classify(samples.first()) // warm-up: the first run sets things up
                    val predictions = samples.map { classifier.classify(it) }
                    Triple(samples, predictions, classifier.medianLatencyMs())
                }
            }
            runOnUiThread {
                if (isDestroyed) return@runOnUiThread
                outcome.onFailure { summary.text = "Could not run ${ModelSpec.MODEL_FILE}: $it" }
                outcome.onSuccess { (samples, predictions, median) ->
                    val correct = samples.indices.count { samples[it].label == predictions[it].label }
                    summary.text = "${ModelSpec.MODEL_FILE}, LiteRT CompiledModel on the CPU\n" +
                        "$correct / ${samples.size} correct; median run %.3f ms (100 runs)".format(median)
                    samples.zip(predictions).forEach { (sample, prediction) ->
                        results.addView(row(sample, prediction))
                    }
                }
            }
        }
    }

    private fun row(sample: FashionSample, prediction: Prediction): LinearLayout {
        val size = (84 * resources.displayMetrics.density).toInt()
        val image = ImageView(this).apply {
            // keep the 28 x 28 pixels sharp when scaled up
            setImageDrawable(BitmapDrawable(resources, bitmap(sample)).apply { paint.isFilterBitmap = false })
            layoutParams = LinearLayout.LayoutParams(size, size)
        }
        val mark = if (prediction.label == sample.label) "✓" else "✗"
        val caption = TextView(this).apply {
            text = "$mark ${ModelSpec.CLASS_NAMES[prediction.label]} (%.0f%%)\n".format(100 * prediction.probability) +
                "true: ${ModelSpec.CLASS_NAMES[sample.label]}\n" +
                "%.3f ms".format(prediction.latencyMs)
            setPadding(size / 4, 0, 0, 0)
        }
        return LinearLayout(this).apply {
            orientation = LinearLayout.HORIZONTAL
            setPadding(0, 8, 0, 8)
            addView(image)
            addView(caption)
        }
    }

    private fun bitmap(sample: FashionSample): Bitmap {
        val (height, width) = ModelSpec.INPUT_SHAPE[1] to ModelSpec.INPUT_SHAPE[2]
        val colors = IntArray(height * width) {
            val grey = sample.pixels[it].toInt() and 0xFF
            Color.rgb(grey, grey, grey)
        }
        return Bitmap.createBitmap(colors, width, height, Bitmap.Config.ARGB_8888)
    }
}
