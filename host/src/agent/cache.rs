//! The on-disk cache of compiled components.
//!
//! Compiling a component with Cranelift takes from milliseconds to tens of
//! seconds, so the host keeps the compiled artifact under
//! `<state_dir>/compiled/<sha256 of the component>-<engine hash>.cwasm`. The
//! engine hash changes with the wasmtime version and the engine settings,
//! so a stale artifact is never loaded; it is simply not found.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Returns the component in `bytes`, compiling it only when no compiled
/// copy is cached in `cache_dir`. `name` identifies it in logs.
pub(super) fn load_component(
    engine: &Engine,
    bytes: &[u8],
    name: &str,
    cache_dir: &Path,
) -> anyhow::Result<Component> {
    let cached = cached_path(engine, bytes, cache_dir);

    if cached.is_file() {
        // SAFETY: the file was written by `Component::serialize` of this host
        // into its own state directory, and its name contains the engine's
        // compatibility hash, so it was produced by a compatible engine.
        // wasmtime also checks the artifact's header before using it.
        match unsafe { Component::deserialize_file(engine, &cached) } {
            Ok(component) => {
                tracing::debug!(component = name, cached = %cached.display(), "agent.cache: loaded compiled component");
                return Ok(component);
            }
            Err(error) => {
                tracing::warn!(cached = %cached.display(), %error, "agent.cache: compiled component is unusable; compiling again");
            }
        }
    }

    let started = std::time::Instant::now();
    let component = Component::new(engine, bytes)
        .map_err(|e| anyhow!("{name} is not a valid component: {e:?}"))?;
    tracing::info!(
        component = name,
        seconds = started.elapsed().as_secs_f64(),
        "agent.cache: compiled component"
    );

    // A failure to cache only costs a recompile next time, so it is logged
    // and not returned.
    let write = || -> anyhow::Result<()> {
        std::fs::create_dir_all(cache_dir)?;
        let serialized = component.serialize().map_err(|e| anyhow!("{e}"))?;
        // Write then rename, so a crash never leaves a truncated artifact
        // under the final name.
        let temporary = cached.with_extension("tmp");
        std::fs::write(&temporary, serialized)?;
        std::fs::rename(&temporary, &cached)?;
        Ok(())
    };
    if let Err(error) = write() {
        tracing::warn!(cached = %cached.display(), %error, "agent.cache: failed to store compiled component");
    }
    Ok(component)
}

fn cached_path(engine: &Engine, bytes: &[u8], cache_dir: &Path) -> PathBuf {
    let digest = hex::encode(Sha256::digest(bytes));
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    cache_dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()))
}
