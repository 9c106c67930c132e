//! The NCCL handles the crate shares between threads: the `unsafe`
//! that [`crate::dist`]'s NCCL backend needs, kept in the launch layer.

use cudarc::nccl::Comm;

/// A communicator that may move to another thread. NCCL allows a communicator to be used
/// from any thread, one call at a time; the owner keeps every `SendComm` behind a mutex,
/// which provides the one-at-a-time part (and `Sync` for the owner).
#[derive(Debug)]
pub(crate) struct SendComm(pub(crate) Comm);

// SAFETY: `Comm` is a raw `ncclComm_t` plus an `Arc<CudaStream>` (itself `Send`). NCCL
// communicators are not tied to the thread that created them: the NCCL documentation
// only forbids concurrent calls on one communicator, and abort-from-another-thread
// (`ncclCommAbort` while a collective hangs) is its documented recovery path. Every
// `SendComm` lives inside a `Mutex` (`crate::dist::nccl`), so calls never overlap.
unsafe impl Send for SendComm {}
