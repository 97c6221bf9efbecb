//! One compiled and linked version of an agent.
//!
//! [`prepare`] turns uploaded bytes into an [`AgentVersion`]: it wraps a
//! core module into a component, compiles the component (or loads it from
//! the compiled cache), links it against the host's imports and finds the
//! exports. Everything that can be wrong with a component shows up here,
//! before a version is ever swapped in, and the error names the culprit.

use anyhow::anyhow;
use wasmtime::component::InstancePre;

use super::bindings::exports::tablehost::agent::{handler, window_close};
use super::host::HostState;
use super::{cache, AgentRuntime};

/// The export that handles events.
const HANDLER_EXPORT: &str = "tablehost:agent/handler@0.1.0";
/// The optional export that receives closed windows.
const WINDOW_CLOSE_EXPORT: &str = "tablehost:agent/window-close@0.1.0";

/// A compiled, linked version of an agent, ready to instantiate.
pub struct AgentVersion {
    pub(super) label: String,
    pub(super) pre: InstancePre<HostState>,
    pub(super) handler: handler::GuestIndices,
    pub(super) window_close: Option<window_close::GuestIndices>,
    imports: Vec<String>,
    size: usize,
    core_module: bool,
}

impl AgentVersion {
    /// Returns the version's label, such as `v3`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Returns the interfaces the component imports.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// Returns the size of the uploaded bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Returns whether the upload was a core module that the host wrapped
    /// into a component.
    pub fn from_core_module(&self) -> bool {
        self.core_module
    }
}

impl std::fmt::Debug for AgentVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentVersion")
            .field("label", &self.label)
            .field("size", &self.size)
            .field("core_module", &self.core_module)
            .finish_non_exhaustive()
    }
}

/// Returns whether `bytes` start like a core WebAssembly module (as
/// opposed to a component, whose header has another version and layer).
fn is_core_module(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm\x01\0\0\0")
}

/// Import prefixes an agent may use: the tablehost world and the WASI 0.2
/// interfaces the host links (see the `wasi` module for what they reach).
const ALLOWED_IMPORTS: &[&str] = &[
    "tablehost:agent/",
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// The result of checking uploaded bytes without compiling them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedComponent {
    /// The interfaces the component imports.
    pub imports: Vec<String>,
    /// Whether the bytes were a core module.
    pub core_module: bool,
}

/// Checks uploaded bytes without compiling them: they parse as a
/// component (or a core module that wraps into one), import nothing
/// outside the tablehost world and the WASI interfaces the host grants,
/// and export the handler. Compiling and linking come later, in
/// [`AgentRuntime::prepare`].
///
/// # Errors
///
/// Fails with what is wrong: which import is not granted, which export is
/// missing, or why the bytes do not parse.
pub fn check_component(bytes: &[u8]) -> anyhow::Result<CheckedComponent> {
    if !bytes.starts_with(b"\0asm") {
        let start: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        anyhow::bail!(
            "not a WebAssembly file: it starts with bytes {} instead of 00 61 73 6d (\"\\0asm\"); upload the .wasm file the build wrote",
            start.join(" ")
        );
    }
    let core_module = is_core_module(bytes);
    let wrapped = if core_module {
        Some(wrap_module(bytes)?)
    } else {
        None
    };
    let component = wrapped.as_deref().unwrap_or(bytes);
    let decoded = wit_component::decode(component)
        .map_err(|e| anyhow!("not a WebAssembly component: {e:#}"))?;
    let wit_component::DecodedWasm::Component(resolve, world) = decoded else {
        anyhow::bail!(
            "the file is a WIT package, not a component; build the agent into a component"
        );
    };
    let world = &resolve.worlds[world];
    let imports: Vec<String> = world
        .imports
        .keys()
        .map(|k| resolve.name_world_key(k))
        .collect();
    let exports: Vec<String> = world
        .exports
        .keys()
        .map(|k| resolve.name_world_key(k))
        .collect();
    let refused: Vec<&String> = imports
        .iter()
        .filter(|name| {
            !ALLOWED_IMPORTS
                .iter()
                .any(|prefix| name.starts_with(prefix))
        })
        .collect();
    if !refused.is_empty() {
        anyhow::bail!(
            "imports {}, which the host does not grant; an agent may import only \
             tablehost:agent and the WASI 0.2 interfaces wasi:cli, io, clocks, random, filesystem and sockets",
            refused.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    if !exports.iter().any(|name| name == HANDLER_EXPORT) {
        anyhow::bail!(
            "does not export {HANDLER_EXPORT} (it exports {}); export the handler of wit/agent.wit",
            if exports.is_empty() {
                "nothing".to_owned()
            } else {
                exports.join(", ")
            }
        );
    }
    Ok(CheckedComponent {
        imports,
        core_module,
    })
}

/// Builds a component around a core module made with wit-bindgen, whose
/// WIT world is in a custom section. Such a module imports no WASI.
fn wrap_module(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    wit_component::ComponentEncoder::default()
        .module(bytes)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|e| {
            anyhow!(
                "the upload is a core module that cannot be made into a component: {e:#}; \
                 build it with wit-bindgen against wit/agent.wit, or upload a component"
            )
        })
}

pub(super) fn prepare(
    runtime: &AgentRuntime,
    agent: &str,
    label: &str,
    bytes: &[u8],
) -> anyhow::Result<AgentVersion> {
    let core_module = is_core_module(bytes);
    let wrapped;
    let component_bytes = if core_module {
        wrapped = wrap_module(bytes)?;
        &wrapped[..]
    } else {
        bytes
    };
    let name = format!("{agent} {label}");
    let component =
        cache::load_component(&runtime.engine, component_bytes, &name, &runtime.cache_dir)?;

    let engine = &runtime.engine;
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    if !exports.iter().any(|name| name == HANDLER_EXPORT) {
        let found: Vec<&str> = exports.iter().map(String::as_str).collect();
        anyhow::bail!(
            "the component does not export {HANDLER_EXPORT} (it exports {}); \
             export the handler of wit/agent.wit",
            if found.is_empty() {
                "nothing".to_owned()
            } else {
                found.join(", ")
            }
        );
    }

    let pre = runtime.linker.instantiate_pre(&component).map_err(|e| {
        anyhow!(
            "the component cannot be linked: {e}; an agent may import only the \
             tablehost:agent interfaces and the WASI interfaces of wasi:cli, wasi:io, \
             wasi:clocks, wasi:random, wasi:filesystem and wasi:sockets 0.2 \
             (it imports {})",
            imports.join(", ")
        )
    })?;
    let handler = handler::GuestIndices::new(&pre)
        .map_err(|e| anyhow!("the component's {HANDLER_EXPORT} export is malformed: {e}"))?;
    // The close handler is optional; a component that exports the
    // interface with the wrong functions is refused.
    let window_close = if exports.iter().any(|name| name == WINDOW_CLOSE_EXPORT) {
        Some(window_close::GuestIndices::new(&pre).map_err(|e| {
            anyhow!("the component's {WINDOW_CLOSE_EXPORT} export is malformed: {e}")
        })?)
    } else {
        None
    };
    Ok(AgentVersion {
        label: label.to_owned(),
        pre,
        handler,
        window_close,
        imports,
        size: bytes.len(),
        core_module,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_tell_modules_from_components() {
        assert!(is_core_module(b"\0asm\x01\0\0\0rest"));
        assert!(!is_core_module(b"\0asm\x0d\0\x01\0rest"));
        assert!(!is_core_module(b"PK\x03\x04"));
    }
}
