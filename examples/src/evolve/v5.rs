//! Step 5 of `docs/EVOLVING_JOBS.md`: a parameter split in two, with
//! `migrate` converting the payloads written before.

use jobs_core::{Args, JobError, job};

/// Welcomes a new user in their language, with regional spelling when known.
#[job(queue = "mail", version = 4, aliases = ["send_welcome_email"], migrate = split_locale)]
pub async fn send_welcome_message(user_id: u64, language: String, region: Option<String>) -> Result<(), JobError> {
    let region = region.as_deref().unwrap_or("-");
    println!("v4 welcome message: user {user_id}, language {language}, region {region}");
    Ok(())
}

/// Version 4 split `locale` ("pt-BR") into `language` ("pt") and `region` ("BR").
fn split_locale(from: u32, args: &mut Args) -> Result<(), JobError> {
    if from < 4 {
        let locale = match args.remove("locale") {
            Some(serde_json::Value::String(locale)) => locale,
            Some(other) => return Err(JobError::fatal(format!("`locale` is not a string: {other}"))),
            None => "en".to_owned(), // version 1 had no locale
        };
        let (language, region) = match locale.split_once('-') {
            Some((language, region)) => (language.to_owned(), Some(region.to_owned())),
            None => (locale, None),
        };
        args.insert("language".into(), language.into());
        args.insert("region".into(), region.into());
    }
    Ok(())
}
