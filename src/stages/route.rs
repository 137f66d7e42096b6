//! route: where a scored lead goes, by a configured routing table.
//!
//! Policy comes first: do-not-contact leads are suppressed, and so are
//! disposable addresses unless configured otherwise. Every other lead goes
//! to each route whose storefront matches and whose optional grade,
//! action, listing, offer-type and offer filters admit it. A lead that no route admits is an error
//! (`unroutable`), never silently dropped.

use serde::{Deserialize, Serialize};

use crate::catalog::{Listing, OfferType};
use crate::domain::{
    ActionCode, EmailClass, Grade, Lead, Offer, Score, Storefront, SuppressionReason,
};
use crate::error::ErrorClass;
use crate::stages::decode::Format;

/// One row of the routing table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Campaign name carried in the output record, e.g. `nurture`.
    pub campaign: String,
    pub storefront: Storefront,
    pub topic: String,
    /// Only leads of these grades; empty admits every grade.
    #[serde(default)]
    pub grades: Vec<Grade>,
    /// Only leads with these action codes; empty admits every action.
    #[serde(default)]
    pub actions: Vec<String>,
    /// Only leads from these listings (`app`, `consulting-service`,
    /// `managed-service`, `unknown`); empty admits every listing.
    #[serde(default)]
    pub listings: Vec<Listing>,
    /// Only leads for offers of these types, as the catalog names them
    /// (`unknown`: offers not in it); empty admits every type.
    #[serde(default)]
    pub offer_types: Vec<OfferType>,
    /// Only leads for these offers (`publisher.offer`); empty admits every
    /// offer.
    #[serde(default)]
    pub offers: Vec<String>,
    /// Encoding of this topic's records; `topics.output_format` when unset.
    #[serde(default)]
    pub format: Option<Format>,
}

/// The routes leadflow uses when the configuration names none.
pub fn default_routes() -> Vec<Route> {
    vec![
        Route {
            campaign: "nurture".into(),
            storefront: Storefront::AppSource,
            topic: "campaign.appsource.nurture".into(),
            grades: Vec::new(),
            actions: Vec::new(),
            listings: Vec::new(),
            offer_types: Vec::new(),
            offers: Vec::new(),
            format: None,
        },
        Route {
            campaign: "demand-gen".into(),
            storefront: Storefront::AzureMarketplace,
            topic: "campaign.azure-marketplace.demand-gen".into(),
            grades: Vec::new(),
            actions: Vec::new(),
            listings: Vec::new(),
            offer_types: Vec::new(),
            offers: Vec::new(),
            format: None,
        },
    ]
}

/// What to do with a lead whose address is disposable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DisposablePolicy {
    /// Send it to the suppressed topic with reason `disposable_email`.
    #[default]
    Suppress,
    /// Send it to the dead-letter topic with class `disposable_email`.
    DeadLetter,
    /// Route it like any other lead.
    Allow,
}

/// Most routes a table may hold: a lead's matches are a 64-bit set.
pub const MAX_ROUTES: usize = 64;

/// The routing table, with action and offer filters read once.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    routes: Vec<Route>,
    actions: Vec<Vec<ActionCode>>,
    /// Per route; an offer that does not read as `publisher.offer` (the
    /// configuration refuses those) matches no lead.
    offers: Vec<Vec<Option<Offer>>>,
    disposable: DisposablePolicy,
}

impl RoutingTable {
    /// Builds a table; the configuration has checked it holds at most
    /// [`MAX_ROUTES`] routes (more are ignored).
    pub fn new(mut routes: Vec<Route>, disposable: DisposablePolicy) -> RoutingTable {
        routes.truncate(MAX_ROUTES);
        let actions = routes
            .iter()
            .map(|r| r.actions.iter().map(|a| ActionCode::parse(a)).collect())
            .collect();
        let offers = routes
            .iter()
            .map(|r| r.offers.iter().map(|o| Offer::parse(o)).collect())
            .collect();
        RoutingTable {
            routes,
            actions,
            offers,
            disposable,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

impl Default for RoutingTable {
    fn default() -> Self {
        RoutingTable::new(default_routes(), DisposablePolicy::default())
    }
}

/// A set of route indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RouteSet(u64);

impl RouteSet {
    /// Indices into [`RoutingTable::routes`], in table order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_ROUTES).filter(move |i| self.0 & (1 << i) != 0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Where a lead that survived dedupe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    Campaigns(RouteSet),
    Suppressed(SuppressionReason),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("no route takes a {storefront} lead with grade {grade} and action {action}")]
    Unroutable {
        storefront: Storefront,
        grade: &'static str,
        action: String,
    },
    #[error("email domain {0} is a disposable-mail service")]
    DisposableEmail(String),
}

impl ErrorClass for RouteError {
    fn class(&self) -> &'static str {
        match self {
            RouteError::Unroutable { .. } => "unroutable",
            RouteError::DisposableEmail(_) => "disposable_email",
        }
    }
}

pub fn route(lead: &Lead, score: &Score, table: &RoutingTable) -> Result<Destination, RouteError> {
    if lead.action == ActionCode::DoNotContact {
        return Ok(Destination::Suppressed(SuppressionReason::DoNotContact));
    }
    if lead.email_class == EmailClass::Disposable {
        match table.disposable {
            DisposablePolicy::Suppress => {
                return Ok(Destination::Suppressed(SuppressionReason::DisposableEmail));
            }
            DisposablePolicy::DeadLetter => {
                return Err(RouteError::DisposableEmail(lead.email_domain.clone()));
            }
            DisposablePolicy::Allow => {}
        }
    }
    let (offer_type, listing) = (lead.offer_type(), lead.listing());
    let mut set = 0u64;
    let filters = table.actions.iter().zip(&table.offers);
    for (i, (route, (actions, offers))) in table.routes.iter().zip(filters).enumerate() {
        let admits = route.storefront == lead.storefront
            && (route.grades.is_empty() || route.grades.contains(&score.grade))
            && (actions.is_empty() || actions.contains(&lead.action))
            && (route.listings.is_empty() || route.listings.contains(&listing))
            && (route.offer_types.is_empty()
                || route.offer_types.iter().any(|t| t.as_str() == offer_type))
            && (offers.is_empty() || offers.iter().any(|o| o.as_ref() == Some(&lead.offer)));
        if admits {
            set |= 1 << i;
        }
    }
    if set == 0 {
        return Err(RouteError::Unroutable {
            storefront: lead.storefront,
            grade: score.grade.as_str(),
            action: lead.action.code().to_owned(),
        });
    }
    Ok(Destination::Campaigns(RouteSet(set)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::fixtures;

    fn score(grade: Grade) -> Score {
        Score {
            points: 50,
            behaviour: 50,
            fit: 0,
            grade,
            mql: false,
            reasons: Vec::new(),
            rules_version: Arc::from("test"),
        }
    }

    fn campaigns(
        destination: Result<Destination, RouteError>,
        table: &RoutingTable,
    ) -> Vec<String> {
        match destination {
            Ok(Destination::Campaigns(set)) => set
                .iter()
                .map(|i| table.routes()[i].campaign.clone())
                .collect(),
            other => panic!("expected campaigns, got {other:?}"),
        }
    }

    #[test]
    fn storefronts_feed_their_default_campaigns() {
        let table = RoutingTable::default();
        let lead = fixtures::lead(Storefront::AppSource, ActionCode::PartnerLedTrial);
        assert_eq!(
            campaigns(route(&lead, &score(Grade::B), &table), &table),
            vec!["nurture"]
        );
        let lead = fixtures::lead(Storefront::AzureMarketplace, ActionCode::Install);
        assert_eq!(
            campaigns(route(&lead, &score(Grade::D), &table), &table),
            vec!["demand-gen"]
        );
    }

    #[test]
    fn do_not_contact_is_suppressed_on_every_storefront() {
        let table = RoutingTable::default();
        for storefront in [Storefront::AppSource, Storefront::AzureMarketplace] {
            let lead = fixtures::lead(storefront, ActionCode::DoNotContact);
            assert_eq!(
                route(&lead, &score(Grade::A), &table),
                Ok(Destination::Suppressed(SuppressionReason::DoNotContact))
            );
        }
    }

    #[test]
    fn disposable_addresses_follow_the_policy() {
        let mut lead = fixtures::lead(Storefront::AppSource, ActionCode::Install);
        lead.email_class = EmailClass::Disposable;
        lead.email_domain = "mailinator.com".into();
        let with = |policy| RoutingTable::new(default_routes(), policy);
        assert_eq!(
            route(&lead, &score(Grade::C), &with(DisposablePolicy::Suppress)),
            Ok(Destination::Suppressed(SuppressionReason::DisposableEmail))
        );
        assert_eq!(
            route(&lead, &score(Grade::C), &with(DisposablePolicy::DeadLetter))
                .map_err(|e| e.class()),
            Err("disposable_email")
        );
        let table = with(DisposablePolicy::Allow);
        assert_eq!(
            campaigns(route(&lead, &score(Grade::C), &table), &table),
            vec!["nurture"]
        );
    }

    #[test]
    fn routes_narrow_by_grade_and_action_and_may_fan_out() {
        let mut routes = default_routes();
        routes[0].grades = vec![Grade::C, Grade::D];
        routes.push(Route {
            campaign: "sales-ready".into(),
            topic: "campaign.appsource.sales-ready".into(),
            grades: vec![Grade::A, Grade::B],
            ..only(Storefront::AppSource)
        });
        routes.push(Route {
            campaign: "trials".into(),
            topic: "campaign.appsource.trials".into(),
            actions: vec!["starttestdrive".into(), "PLT".into()],
            ..only(Storefront::AppSource)
        });
        let table = RoutingTable::new(routes, DisposablePolicy::Suppress);
        let plt = fixtures::lead(Storefront::AppSource, ActionCode::PartnerLedTrial);
        assert_eq!(
            campaigns(route(&plt, &score(Grade::A), &table), &table),
            vec!["sales-ready", "trials"]
        );
        let ins = fixtures::lead(Storefront::AppSource, ActionCode::Install);
        assert_eq!(
            campaigns(route(&ins, &score(Grade::D), &table), &table),
            vec!["nurture"]
        );
    }

    /// A route admitting every lead of a storefront.
    fn only(storefront: Storefront) -> Route {
        let mut route = default_routes()
            .into_iter()
            .find(|r| r.storefront == storefront)
            .expect("a default route");
        route.campaign = "any".into();
        route
    }

    /// docs/scoring-and-routing.md's example: consulting-service "Contact
    /// me" leads go to sales instead of the nurture campaign.
    #[test]
    fn routes_narrow_by_listing_offer_type_and_offer() {
        let routes = vec![
            Route {
                campaign: "nurture".into(),
                listings: vec![Listing::App, Listing::Unknown],
                ..only(Storefront::AppSource)
            },
            Route {
                campaign: "sales".into(),
                topic: "sales.consulting".into(),
                listings: vec![Listing::ConsultingService],
                actions: vec!["PLT".into()],
                ..only(Storefront::AppSource)
            },
            Route {
                campaign: "dynamics".into(),
                topic: "campaign.dynamics".into(),
                offer_types: vec![
                    OfferType::Dynamics365,
                    OfferType::parse("unknown").expect("id"),
                ],
                ..only(Storefront::AppSource)
            },
            Route {
                campaign: "flagship".into(),
                topic: "campaign.flagship".into(),
                offers: vec!["Contoso.Flagship".into()],
                ..only(Storefront::AppSource)
            },
        ];
        let table = RoutingTable::new(routes, DisposablePolicy::Suppress);
        let to = |lead: &Lead| campaigns(route(lead, &score(Grade::B), &table), &table);

        let mut workshop = fixtures::lead(Storefront::AppSource, ActionCode::PartnerLedTrial);
        fixtures::catalogued(&mut workshop, OfferType::ConsultingService);
        assert_eq!(to(&workshop), vec!["sales"]);

        let mut app = fixtures::lead(Storefront::AppSource, ActionCode::PartnerLedTrial);
        fixtures::catalogued(&mut app, OfferType::Dynamics365);
        assert_eq!(to(&app), vec!["nurture", "dynamics"]);

        let mut flagship = fixtures::lead(Storefront::AppSource, ActionCode::Install);
        flagship.offer = Offer::parse("contoso.flagship").expect("offer");
        fixtures::catalogued(&mut flagship, OfferType::Saas);
        assert_eq!(to(&flagship), vec!["nurture", "flagship"]);

        // Not in the catalog: listing and offer type `unknown`.
        let uncatalogued = fixtures::lead(Storefront::AppSource, ActionCode::Install);
        assert_eq!(to(&uncatalogued), vec!["nurture", "dynamics"]);
    }

    #[test]
    fn a_lead_no_route_admits_is_unroutable() {
        let table = RoutingTable::new(default_routes()[..1].to_vec(), DisposablePolicy::Suppress);
        let lead = fixtures::lead(Storefront::AzureMarketplace, ActionCode::Install);
        let error = route(&lead, &score(Grade::A), &table).expect_err("no Azure route");
        assert_eq!(error.class(), "unroutable");
        assert!(error.to_string().contains("azure-marketplace"), "{error}");
    }
}
