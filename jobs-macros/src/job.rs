//! The `#[job]` pipeline: parse → model → expand. On error it emits the
//! errors next to the user's function, so the rest of the file still checks.

use proc_macro2::TokenStream;
use quote::quote;

use crate::ctxt::Ctxt;
use crate::{expand, model, parse};

/// Expands `#[job(args)] item`.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let Some(input) = parse::parse(&cx, args, item.clone()) else {
        return with_errors(cx, item);
    };
    let job = model::build(&cx, &input);
    let func = &input.func;
    match cx.check() {
        Ok(()) => {
            let generated = expand::expand(&job);
            quote!(#func #generated)
        }
        Err(errors) => {
            let errors = errors.into_compile_error();
            quote!(#errors #func)
        }
    }
}

/// The errors, then the item untouched.
fn with_errors(cx: Ctxt, item: TokenStream) -> TokenStream {
    let errors = cx.check().err().map(syn::Error::into_compile_error);
    quote!(#errors #item)
}
