// Option syntax mistakes, each with what to write.
use jobs_core::job;

#[job(= 3)]
async fn no_name(n: u64) { let _ = n; }

#[job(aliases = "old_name")]
async fn aliases_not_a_list(n: u64) { let _ = n; }

#[job]
async fn empty_param_alias(#[job(alias = "")] n: u64) { let _ = n; }

#[job]
async fn default_without_expression(#[job(default = )] n: u64) { let _ = n; }

#[job]
const fn constant(n: u64) { let _ = n; }

fn main() {}
