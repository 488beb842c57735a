import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
}

android {
    namespace = "com.example.tflowrank.fashion"
    compileSdk = 36

    defaultConfig {
        applicationId = "com.example.tflowrank.fashion"
        minSdk = 23 // LiteRT 2.1.x
        targetSdk = 35
        versionCode = 1
        versionName = "1.0"
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_11
        targetCompatibility = JavaVersion.VERSION_11
    }
}

kotlin {
    compilerOptions {
        jvmTarget = JvmTarget.JVM_11
    }
}

dependencies {
    implementation(libs.litert)
}

// The model is not committed: `tflowrank export` writes it (README.md). Fail the build with that
// instruction rather than let the app crash at start. Its name is read from ModelSpec.kt, the one
// place the app's model contract is written.
val modelSpec = layout.projectDirectory.file("src/main/java/com/example/tflowrank/fashion/ModelSpec.kt")
val modelFile = Regex("""const val MODEL_FILE = "([^"]+)"""")
    .find(providers.fileContents(modelSpec).asText.get())
    ?.groupValues?.get(1) ?: error("No MODEL_FILE constant in $modelSpec")
val modelAsset = file("src/main/assets/$modelFile")
val checkModelAsset by tasks.registering {
    description = "Checks that the exported model is in src/main/assets."
    doLast {
        if (!modelAsset.isFile) {
            throw GradleException(
                "Missing $modelAsset. Export it first (from the repository root):\n" +
                    "  tflowrank export MODEL.keras -o android_demo/app/src/main/assets/$modelFile " +
                    "--quantize int8 --data fashion-mnist\n" +
                    "See android_demo/README.md.",
            )
        }
    }
}
tasks.named("preBuild") { dependsOn(checkModelAsset) }
