//! The model contract: `models/<name>.toml` beside `models/<name>.onnx`. Every key is optional;
//! what is missing comes from the ONNX file (input size) or ImageNet defaults (mean/std).

use serde::Deserialize;

/// The sidecar file. Unknown keys are errors, so a typo never silently falls back to a default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// Model name reported in verdicts and status (default: the file stem).
    pub name: Option<String>,
    /// Model version reported in verdicts and status.
    pub version: Option<String>,
    #[serde(default)]
    pub input: InputSection,
    #[serde(default)]
    pub output: OutputSection,
    #[serde(default)]
    pub cam: CamSection,
    /// Interchangeable builds of this model (same contract), one of which runs: see
    /// `model::variant`. Paths are relative to the sidecar's folder.
    #[serde(default)]
    pub variants: VariantsSection,
}

/// `[variants]`: the files of the same model in each number format. At load the daemon times
/// the ones listed on this CPU and runs the fastest (or the one `model.variant` names).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantsSection {
    /// The f32 build.
    pub f32: Option<String>,
    /// The int8 (quantized) build.
    pub int8: Option<String>,
}

impl VariantsSection {
    /// The listed variants, f32 first.
    pub fn listed(&self) -> Vec<(&'static str, &str)> {
        [("f32", &self.f32), ("int8", &self.int8)]
            .into_iter()
            .filter_map(|(n, p)| p.as_deref().map(|p| (n, p)))
            .collect()
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    /// Model input width in pixels (default: from the ONNX input shape).
    pub width: Option<u32>,
    /// Model input height in pixels (default: from the ONNX input shape).
    pub height: Option<u32>,
    /// Tensor layout, `NCHW` (default) or `NHWC`.
    pub layout: Option<Layout>,
    /// Channel order the model expects, `RGB` (default) or `BGR`.
    pub color: Option<ColorOrder>,
    /// Per-channel mean on the 0..1 scale, in the model's channel order (default ImageNet).
    pub mean: Option<[f32; 3]>,
    /// Per-channel standard deviation on the 0..1 scale (default ImageNet).
    pub std: Option<[f32; 3]>,
    /// How a frame of another size is fitted: `stretch` (default) or `center-crop`.
    pub resize: Option<ResizeMode>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// `softmax` (logits, default), `sigmoid` (independent logits) or `probabilities`.
    pub kind: Option<OutputKind>,
    /// Class labels by output index.
    pub labels: Option<Vec<String>>,
    /// The label that means "no defect".
    pub ok_label: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CamSection {
    /// Default target layer: `auto` or an ONNX tensor name.
    pub layer: Option<String>,
    /// Default CAM method.
    pub method: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Layout {
    #[serde(alias = "nchw")]
    NCHW,
    #[serde(alias = "nhwc")]
    NHWC,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ColorOrder {
    #[serde(alias = "rgb")]
    RGB,
    #[serde(alias = "bgr")]
    BGR,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    Stretch,
    CenterCrop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Softmax,
    Sigmoid,
    Probabilities,
}

impl Sidecar {
    pub fn parse(text: &str) -> Result<Sidecar, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_sidecar_parses() {
        let s = Sidecar::parse(
            r#"
name = "surface-defect"
version = "1.0.0"
[input]
width = 128
height = 96
layout = "NHWC"
color = "BGR"
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
resize = "center-crop"
[output]
kind = "sigmoid"
labels = ["ok", "defect"]
ok_label = "ok"
[cam]
layer = "/features/relu"
method = "gradcam++"
[variants]
f32 = "m-f32.onnx"
int8 = "m-int8.onnx"
"#,
        )
        .unwrap();
        assert_eq!(s.input.width, Some(128));
        assert_eq!(s.input.layout, Some(Layout::NHWC));
        assert_eq!(s.input.resize, Some(ResizeMode::CenterCrop));
        assert_eq!(s.output.kind, Some(OutputKind::Sigmoid));
        assert_eq!(s.cam.layer.as_deref(), Some("/features/relu"));
        assert_eq!(
            s.variants.listed(),
            vec![("f32", "m-f32.onnx"), ("int8", "m-int8.onnx")]
        );
    }

    #[test]
    fn an_unknown_variant_is_rejected_with_its_name() {
        let err = Sidecar::parse("[variants]\nfp16 = \"m.onnx\"\n").unwrap_err();
        assert!(err.contains("fp16"), "{err}");
        assert!(Sidecar::default().variants.listed().is_empty());
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = Sidecar::parse("[input]\nwidht = 3\n").unwrap_err();
        assert!(err.contains("widht"), "{err}");
    }
}
