//! Who may call what. Every route is registered through [`Routes`] with the
//! least role it needs, so a route without a declared role cannot exist
//! (there is no other way to add one), and the table that the authorization
//! middleware reads is the same one the RBAC test walks.
//!
//! Routes under `/api/gateways/{gw}/…` and `/ws/{gw}/…` are about one
//! gateway: the caller's role on that gateway decides (per-gateway
//! overrides apply). Every other route uses the caller's global role.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::MethodRouter;
use breakwater_domain::access::Role;

use crate::AppState;

/// The least a caller needs for a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not (health, sign-in).
    Public,
    /// At least this role (on the route's gateway, for gateway routes).
    Role(Role),
}

pub const PUBLIC: Access = Access::Public;
pub const VIEWER: Access = Access::Role(Role::Viewer);
pub const OPERATOR: Access = Access::Role(Role::Operator);
pub const ADMIN: Access = Access::Role(Role::Admin);

/// One route of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    pub path: String,
    pub access: Access,
}

impl RouteSpec {
    /// Whether the route is about one gateway (its `{gw}` decides the role).
    #[must_use]
    pub fn gateway_scoped(&self) -> bool {
        self.path.starts_with("/api/gateways/{gw}") || self.path.starts_with("/ws/{gw}")
    }
}

/// Routes with their roles, merged per path.
#[derive(Default)]
pub struct Routes {
    paths: Vec<(String, MethodRouter<AppState>)>,
    specs: Vec<RouteSpec>,
}

macro_rules! verb {
    ($name:ident, $method:ident, $routing:ident) => {
        #[must_use]
        pub fn $name<H, T>(self, path: impl Into<String>, access: Access, handler: H) -> Self
        where
            H: Handler<T, AppState>,
            T: 'static,
        {
            self.method(Method::$method, path, access, axum::routing::$routing(handler))
        }
    };
}

impl Routes {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    verb!(get, GET, get);
    verb!(post, POST, post);
    verb!(put, PUT, put);
    verb!(patch, PATCH, patch);
    verb!(delete, DELETE, delete);

    /// A method router built by hand (e.g. with a layer of its own).
    #[must_use]
    pub fn method(
        mut self,
        method: Method,
        path: impl Into<String>,
        access: Access,
        mr: MethodRouter<AppState>,
    ) -> Self {
        let path = path.into();
        self.specs.push(RouteSpec { method, path: path.clone(), access });
        match self.paths.iter_mut().find(|(p, _)| *p == path) {
            Some((_, existing)) => *existing = std::mem::take(existing).merge(mr),
            None => self.paths.push((path, mr)),
        }
        self
    }

    #[must_use]
    pub fn merge(mut self, other: Routes) -> Self {
        for (path, mr) in other.paths {
            match self.paths.iter_mut().find(|(p, _)| *p == path) {
                Some((_, existing)) => *existing = std::mem::take(existing).merge(mr),
                None => self.paths.push((path, mr)),
            }
        }
        self.specs.extend(other.specs);
        self
    }

    /// The router and the table of every route in it.
    pub fn build(self) -> (Router<AppState>, RouteTable) {
        let mut router = Router::new();
        for (path, mr) in self.paths {
            router = router.route(&path, mr);
        }
        (router, RouteTable::new(self.specs))
    }
}

/// The table the authorization middleware reads. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct RouteTable(Arc<HashMap<(Method, String), RouteSpec>>);

impl RouteTable {
    fn new(specs: Vec<RouteSpec>) -> Self {
        Self(Arc::new(specs.into_iter().map(|s| ((s.method.clone(), s.path.clone()), s)).collect()))
    }

    /// The route a request matched (HEAD is checked as GET).
    #[must_use]
    pub fn find(&self, method: &Method, matched_path: &str) -> Option<&RouteSpec> {
        let method = if *method == Method::HEAD { Method::GET } else { method.clone() };
        self.0.get(&(method, matched_path.to_owned()))
    }

    /// Whether some method is registered on this path (others get a 405).
    #[must_use]
    pub fn has_path(&self, matched_path: &str) -> bool {
        self.0.keys().any(|(_, p)| p == matched_path)
    }

    /// Every route, sorted by path then method.
    #[must_use]
    pub fn all(&self) -> Vec<RouteSpec> {
        let mut v: Vec<RouteSpec> = self.0.values().cloned().collect();
        v.sort_by(|a, b| a.path.cmp(&b.path).then_with(|| a.method.as_str().cmp(b.method.as_str())));
        v
    }
}
