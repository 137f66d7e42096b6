//! score: a transparent points score on fit and behaviour, and a grade.
//!
//! Behaviour is what the customer did (the action code); fit is who they are
//! (title seniority, company). Every point carries a reason, so a publisher
//! can see why a lead scored as it did. The weights follow common
//! marketing-automation practice (see the domain notes); they become
//! configuration with versioned rule sets later.

use crate::domain::{ActionCode, Grade, Lead, Score};

/// Version of the built-in rule set, carried on every output.
pub const RULES_VERSION: &str = "builtin-1";

/// Scores a lead. Pure and allocation-light: reasons are static strings.
pub fn score(lead: &Lead) -> Score {
    let mut points = 0;
    let mut reasons = Vec::with_capacity(4);
    let mut add = |p: i32, reason: &'static str| {
        points += p;
        reasons.push(reason);
    };
    match &lead.action {
        ActionCode::Create => add(60, "action:create"),
        ActionCode::Install => add(50, "action:install"),
        ActionCode::PartnerLedTrial => {
            add(50, "action:contact-me");
            if lead.description.as_deref().is_some_and(has_notes) {
                add(5, "notes");
            }
        }
        ActionCode::StartTestDrive => add(40, "action:test-drive"),
        ActionCode::DoNotContact => {}
        ActionCode::Other(_) => add(20, "action:other"),
    }
    if let Some(title) = lead.title.as_deref() {
        match seniority(title) {
            Some(Seniority::CLevel) => add(25, "title:c-level"),
            Some(Seniority::VicePresident) => add(20, "title:vp"),
            Some(Seniority::Director) => add(15, "title:director"),
            Some(Seniority::Manager) => add(10, "title:manager"),
            None => {}
        }
    }
    if lead.company.is_some() {
        add(5, "company");
    }
    let grade = match points {
        p if p >= 80 => Grade::A,
        p if p >= 65 => Grade::B,
        p if p >= 50 => Grade::C,
        _ => Grade::D,
    };
    Score {
        points,
        grade,
        reasons,
        rules_version: RULES_VERSION,
    }
}

/// A `Description` of `Campaigns: ...` is Microsoft's, not the customer's.
fn has_notes(description: &str) -> bool {
    !description.trim_start().starts_with("Campaigns:")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seniority {
    CLevel,
    VicePresident,
    Director,
    Manager,
}

fn seniority(title: &str) -> Option<Seniority> {
    let title = title.to_lowercase();
    let words: Vec<&str> = title
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let has = |w: &str| words.contains(&w);
    if words.iter().any(|w| {
        matches!(
            *w,
            "ceo" | "cto" | "cio" | "cfo" | "coo" | "cmo" | "ciso" | "chief" | "founder" | "owner"
        )
    }) {
        Some(Seniority::CLevel)
    } else if has("vp") || title.contains("vice president") || has("head") {
        Some(Seniority::VicePresident)
    } else if has("director") {
        Some(Seniority::Director)
    } else if has("manager") || has("lead") {
        Some(Seniority::Manager)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures;

    fn lead(action: ActionCode, title: Option<&str>, company: Option<&str>) -> Lead {
        let mut lead = fixtures::lead(crate::domain::Storefront::AppSource, action);
        lead.title = title.map(Into::into);
        lead.company = company.map(Into::into);
        lead.description = Some("Need forecasting".into());
        lead
    }

    #[test]
    fn scores_behaviour_and_fit_with_reasons() {
        let s = score(&lead(ActionCode::Create, Some("CIO"), Some("Adatum")));
        assert_eq!(s.points, 90);
        assert_eq!(s.grade, Grade::A);
        assert_eq!(s.reasons, vec!["action:create", "title:c-level", "company"]);

        let s = score(&lead(ActionCode::PartnerLedTrial, Some("IT Manager"), None));
        assert_eq!(s.points, 65);
        assert_eq!(s.grade, Grade::B);
        assert_eq!(
            s.reasons,
            vec!["action:contact-me", "notes", "title:manager"]
        );

        let s = score(&lead(
            ActionCode::Other("Subscribe".into()),
            Some("Developer"),
            None,
        ));
        assert_eq!((s.points, s.grade), (20, Grade::D));
        assert_eq!(s.rules_version, RULES_VERSION);
    }

    #[test]
    fn recognises_seniority_by_whole_words() {
        assert_eq!(seniority("VP Engineering"), Some(Seniority::VicePresident));
        assert_eq!(
            seniority("Head of Sales Ops"),
            Some(Seniority::VicePresident)
        );
        assert_eq!(seniority("Director of Platform"), Some(Seniority::Director));
        assert_eq!(seniority("Cloud Architect"), None);
        // "cto" inside another word is not a CTO.
        assert_eq!(seniority("Doctor"), None);
    }
}
