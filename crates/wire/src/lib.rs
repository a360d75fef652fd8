//! OpenShell 0.1 gateway protocol, generated from our own `.proto` files.
//!
//! Nothing but generated code lives here: mapping to domain types belongs to
//! `breakwater-gateway`, so proto types never leak further up the stack.
#![forbid(unsafe_code)]
#![allow(clippy::pedantic, clippy::all, missing_docs)]

/// Generated modules nest like the proto packages (`openshell.datamodel.v1`
/// is `openshell::datamodel::v1`) because prost's cross-package references are
/// relative paths.
pub mod openshell {
    /// `openshell.v1`: the `OpenShell` service and its messages.
    pub mod v1 {
        tonic::include_proto!("openshell.v1");
    }
    /// `openshell.datamodel.v1`: object metadata, workspaces, providers.
    pub mod datamodel {
        pub mod v1 {
            tonic::include_proto!("openshell.datamodel.v1");
        }
    }
    /// `openshell.sandbox.v1`: policy and configuration types.
    pub mod sandbox {
        pub mod v1 {
            tonic::include_proto!("openshell.sandbox.v1");
        }
    }
}

/// `google.rpc`: the rich error model carried in `grpc-status-details-bin`.
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");

        /// Type URLs of the detail messages, as packed into `Any`.
        pub const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";
        pub const BAD_REQUEST_TYPE: &str = "type.googleapis.com/google.rpc.BadRequest";
        pub const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";
    }
}

pub use openshell::datamodel::v1 as datamodel;
pub use openshell::sandbox::v1 as sandbox;
pub use openshell::v1;

/// The compiled `FileDescriptorSet` of our protos, for conformance checks.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openshell_descriptor.bin"));
