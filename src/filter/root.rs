//! The root context: one per VM. Compiles the configuration once and hands it to every
//! request context.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use super::host;
use super::http::WeirHttp;
use crate::config::{Config, Gateway};

#[derive(Default)]
pub struct WeirRoot {
    gateway: Option<Rc<Gateway>>,
    /// Configured with root id `weir-upstream`: the per-attempt upstream filter.
    upstream: bool,
}

impl Context for WeirRoot {}

impl RootContext for WeirRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.upstream =
            host::property(&["plugin_root_id"]).is_some_and(|id| id == b"weir-upstream");
        let bytes = host::buffer(host::PLUGIN_CONFIGURATION, 0, usize::MAX).unwrap_or_default();
        let config = Config::from_json(&bytes);
        // Wasm memory never shrinks: free the text before building the key index, so the
        // two are never held at once.
        drop(bytes);
        // Credentials named by `envoy_credential_env` come from the VM's environment (WASI
        // `environ_get`), which Envoy fills from its own for the names in `vm_config`.
        let config = config.and_then(|mut c| c.fill_envoy_credentials(host::env_var).map(|()| c));
        match config.and_then(Config::into_gateway) {
            Ok(gateway) => {
                log::info!(
                    "weir: configuration loaded: {} providers, {} tiers, {} keys",
                    gateway.providers.len(),
                    gateway.tiers.len(),
                    gateway.keys.len()
                );
                self.gateway = Some(Rc::new(gateway));
                true
            }
            Err(e) => {
                // Returning false makes Envoy refuse this configuration and keep the last good one.
                log::error!("weir: configuration rejected: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.upstream {
            return Some(Box::new(super::upstream::WeirUpstream::new(
                self.gateway.clone(),
            )));
        }
        // Always a context: without a configuration it fails closed on every request.
        Some(Box::new(WeirHttp::new(self.gateway.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
