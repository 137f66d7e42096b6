//! route: where a scored lead goes. Do-not-contact leads never reach a
//! campaign; every other lead feeds its storefront's campaign. Topic names
//! are the runtime's concern: this stage speaks in campaigns.

use crate::domain::{ActionCode, Campaign, Lead, SuppressionReason};

/// The destination of a lead that survived dedupe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    Campaign(Campaign),
    Suppressed(SuppressionReason),
}

pub fn route(lead: &Lead) -> Destination {
    if lead.action == ActionCode::DoNotContact {
        return Destination::Suppressed(SuppressionReason::DoNotContact);
    }
    Destination::Campaign(lead.storefront.campaign())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Storefront;
    use crate::domain::fixtures;

    #[test]
    fn storefronts_feed_their_campaigns() {
        assert_eq!(
            route(&fixtures::lead(
                Storefront::AppSource,
                ActionCode::PartnerLedTrial
            )),
            Destination::Campaign(Campaign::Nurture)
        );
        assert_eq!(
            route(&fixtures::lead(
                Storefront::AzureMarketplace,
                ActionCode::Install
            )),
            Destination::Campaign(Campaign::DemandGeneration)
        );
    }

    #[test]
    fn do_not_contact_is_suppressed_on_every_storefront() {
        for storefront in [Storefront::AppSource, Storefront::AzureMarketplace] {
            assert_eq!(
                route(&fixtures::lead(storefront, ActionCode::DoNotContact)),
                Destination::Suppressed(SuppressionReason::DoNotContact)
            );
        }
    }
}
