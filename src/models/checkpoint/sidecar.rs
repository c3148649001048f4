//! What AUTOMATIC1111 keeps beside a checkpoint: `<stem>.yaml` (the original training config,
//! which says whether the model predicts v) and `<stem>.vae.safetensors` (a VAE to use with it).

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use crate::diffusion::schedulers::PredictionType;
use crate::models::ModelError;

/// What a `.yaml` beside a checkpoint says that Easel uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SidecarYaml {
    pub path: PathBuf,
    /// `model.params.parameterization`: `"v"` or `"eps"`; absent means the file does not say.
    pub prediction: Option<PredictionType>,
    /// `model.params.zero_terminal_snr` or `rescale_betas_zero_snr` (the spellings in use for
    /// zero-terminal-SNR fine-tunes; the original configs predate it).
    pub zero_terminal_snr: bool,
}

/// `<stem>.yaml` (or `.yml`) beside `checkpoint`.
pub fn yaml_path(checkpoint: &Path) -> Option<PathBuf> {
    ["yaml", "yml"]
        .into_iter()
        .map(|ext| checkpoint.with_extension(ext))
        .find(|p| p.is_file())
}

/// Reads the `.yaml` beside `checkpoint`, if there is one; a file that does not parse is an
/// error naming it (a wrong guess at the prediction type gives a wrong image).
pub fn read_yaml(checkpoint: &Path) -> Result<Option<SidecarYaml>, ModelError> {
    let Some(path) = yaml_path(checkpoint) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    parse_yaml(&text, &path).map(Some)
}

pub fn parse_yaml(text: &str, path: &Path) -> Result<SidecarYaml, ModelError> {
    let bad = |m: String| ModelError::bad_config(path, m);
    let docs = YamlLoader::load_from_str(text).map_err(|e| bad(format!("not valid YAML: {e}")))?;
    let doc = docs.into_iter().next().unwrap_or(Yaml::Null);
    if !matches!(doc, Yaml::Hash(_) | Yaml::Null) {
        return Err(bad(
            "not a model config (the top level is not a mapping)".into()
        ));
    }
    let params = &doc["model"]["params"];
    let prediction = match &params["parameterization"] {
        Yaml::BadValue | Yaml::Null => None,
        Yaml::String(s) if s == "v" => Some(PredictionType::VPrediction),
        Yaml::String(s) if s == "eps" => Some(PredictionType::Epsilon),
        other => {
            return Err(bad(format!(
                "model.params.parameterization is {other:?}; Easel knows \"eps\" and \"v\""
            )))
        }
    };
    let zero_terminal_snr = ["zero_terminal_snr", "rescale_betas_zero_snr"]
        .iter()
        .any(|k| params[*k].as_bool() == Some(true));
    Ok(SidecarYaml {
        path: path.to_path_buf(),
        prediction,
        zero_terminal_snr,
    })
}

/// A1111's per-checkpoint VAE: `<stem>.vae.safetensors` (or `.vae.pt`, `.vae.ckpt`) beside it.
pub fn vae_beside(checkpoint: &Path) -> Option<PathBuf> {
    let stem = checkpoint.file_stem()?.to_str()?;
    let dir = checkpoint.parent()?;
    ["safetensors", "pt", "ckpt"]
        .into_iter()
        .map(|ext| dir.join(format!("{stem}.vae.{ext}")))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a1111_configs() {
        let p = Path::new("x.yaml");
        let v = parse_yaml(
            "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n    parameterization: \"v\"\n    linear_start: 0.00085\n",
            p,
        )
        .unwrap();
        assert_eq!(v.prediction, Some(PredictionType::VPrediction));
        assert!(!v.zero_terminal_snr);
        let e = parse_yaml("model:\n  params:\n    linear_start: 0.00085\n", p).unwrap();
        assert_eq!(e.prediction, None);
        let z = parse_yaml(
            "model:\n  params:\n    parameterization: v\n    zero_terminal_snr: true\n",
            p,
        )
        .unwrap();
        assert!(z.zero_terminal_snr);
    }

    #[test]
    fn broken_yaml_is_an_error_naming_the_file() {
        for text in [
            "model: [unclosed",
            "- just\n- a list",
            "model:\n  params:\n    parameterization: x0\n",
        ] {
            let err = parse_yaml(text, Path::new("/m/x.yaml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("/m/x.yaml"), "{err}");
        }
    }
}
