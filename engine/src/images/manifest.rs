//! Image manifests and indexes (OCI and Docker schema 2), as OCI layouts
//! and registries serve them: media types, descriptors, and the choice of
//! one platform's image from an index. Pure, tested by tables.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

pub const INDEX_TYPES: &[&str] = &[OCI_INDEX, DOCKER_LIST];
pub const MANIFEST_TYPES: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST];
pub const CONFIG_TYPES: &[&str] = &[OCI_CONFIG, DOCKER_CONFIG];

#[derive(Clone, Debug, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// From an index: the image for linux/`arch`, else the only image that is
/// not an attestation (`unknown/unknown`).
pub fn choose_platform<'a>(list: &'a [Descriptor], arch: &str) -> Option<&'a Descriptor> {
    let images: Vec<&Descriptor> = list.iter().filter(|d| MANIFEST_TYPES.contains(&d.media_type.as_str())).collect();
    let exact = images.iter().find(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch));
    if let Some(d) = exact {
        return Some(d);
    }
    let real: Vec<&&Descriptor> =
        images.iter().filter(|d| d.platform.as_ref().is_none_or(|p| p.os != "unknown")).collect();
    match real.as_slice() {
        [only] => Some(only),
        _ => None,
    }
}

/// The platforms an index offers (attestations left out), for an error
/// that says what is there.
pub fn platforms(list: &[Descriptor]) -> Vec<String> {
    list.iter().filter_map(|d| d.platform.as_ref()).filter(|p| p.os != "unknown").map(ToString::to_string).collect()
}

/// Whether a layer's media type names a compression the store cannot read.
pub fn unsupported_layer(media_type: &str) -> Option<&'static str> {
    if media_type.contains("zstd") { Some("zstd") } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media: &str, arch: &str, os: &str) -> Descriptor {
        Descriptor {
            media_type: media.into(),
            digest: Digest::of(format!("{arch}/{os}").as_bytes()),
            size: 1,
            annotations: BTreeMap::new(),
            platform: Some(Platform { architecture: arch.into(), os: os.into(), variant: None }),
        }
    }

    #[test]
    fn platform_choice_table() {
        let m = MANIFEST_TYPES[0];
        let cases: Vec<(Vec<Descriptor>, Option<&str>)> = vec![
            (vec![desc(m, "arm64", "linux"), desc(m, "amd64", "linux")], Some("amd64")),
            (vec![desc(m, "arm64", "linux"), desc(m, "unknown", "unknown")], Some("arm64")),
            (vec![desc(m, "arm64", "linux"), desc(m, "s390x", "linux")], None),
            (vec![desc(INDEX_TYPES[0], "amd64", "linux")], None),
            (vec![desc(DOCKER_MANIFEST, "amd64", "windows"), desc(DOCKER_MANIFEST, "amd64", "linux")], Some("amd64")),
            (vec![], None),
        ];
        for (list, want) in cases {
            let got =
                choose_platform(&list, "amd64").and_then(|d| d.platform.as_ref()).map(|p| p.architecture.as_str());
            assert_eq!(got, want);
        }
    }

    #[test]
    fn registry_documents_parse() {
        // A Docker manifest list as Docker Hub serves it, with a variant.
        let list = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json",
          "manifests":[
            {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,
             "digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
             "platform":{"architecture":"arm","os":"linux","variant":"v7"}},
            {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,
             "digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
             "platform":{"architecture":"s390x","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":566,
             "digest":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc",
             "platform":{"architecture":"unknown","os":"unknown"}}]}"#;
        let index: Index = serde_json::from_slice(list).expect("index");
        assert!(choose_platform(&index.manifests, "amd64").is_none());
        assert_eq!(platforms(&index.manifests), ["linux/arm/v7", "linux/s390x"]);
        assert_eq!(choose_platform(&index.manifests, "s390x").map(|d| d.digest.hex().as_bytes()[0]), Some(b'b'));

        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
          "config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1457,
                    "digest":"sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"},
          "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":2152262,
                     "digest":"sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"}]}"#;
        let m: Manifest = serde_json::from_slice(manifest).expect("manifest");
        assert_eq!(m.schema_version, Some(2));
        assert_eq!(m.config.size, 1457);
        assert_eq!(m.layers.len(), 1);
        assert_eq!(unsupported_layer(&m.layers[0].media_type), None);
        assert_eq!(unsupported_layer("application/vnd.oci.image.layer.v1.tar+zstd"), Some("zstd"));
        // A bad digest is refused while parsing.
        let bad = br#"{"config":{"digest":"sha256:xyz","size":1},"layers":[]}"#;
        assert!(serde_json::from_slice::<Manifest>(bad).is_err());
    }
}
