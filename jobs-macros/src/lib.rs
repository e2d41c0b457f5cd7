//! The `#[job]` attribute of the `jobs` background-job framework. Use it
//! through `jobs_core::job`; the generated code needs `jobs_core`.
//!
//! The pipeline has one module per stage: `parse` (syntax → raw options),
//! `model` (validation → the job model), `expand` (model → tokens); `ctxt`
//! collects every error of one item so they are reported together.

mod ctxt;
mod expand;
mod job;
mod model;
mod parse;

use proc_macro::TokenStream;

/// Turns an `async fn` into a registered, versioned job type.
///
/// Beside the function it generates a struct named in PascalCase after it,
/// with `perform_later`, `perform_in`, `perform_at` and `perform_now`, an
/// `impl Job` and a registration for the worker. See `jobs_core::job` for
/// the options and an example.
#[proc_macro_attribute]
pub fn job(args: TokenStream, item: TokenStream) -> TokenStream {
    job::expand(args.into(), item.into()).into()
}
