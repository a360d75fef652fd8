//! Cursor pagination as OpenShell 0.1 does it: opaque tokens, never offsets.

use serde::{Deserialize, Serialize};

/// Which page to fetch. An empty token means the first page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    /// 0 lets the gateway choose.
    pub page_size: u32,
    pub page_token: String,
}

impl PageRequest {
    #[must_use]
    pub fn first(page_size: u32) -> Self {
        Self { page_size, page_token: String::new() }
    }
}

/// One page of results. `next_page_token` is empty on the last page and must
/// be passed back as is: clients never parse it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

impl<T> Page<T> {
    #[must_use]
    pub fn is_last(&self) -> bool {
        self.next_page_token.is_empty()
    }
}
