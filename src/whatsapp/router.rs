//! Which provider a message leaves through. Every business number belongs to one provider
//! (an ACS channel registration id, a Meta phone number id) and may name the agent profile that
//! answers it (`WHATSAPP_NUMBERS`). A reply goes through the owner of the number the customer
//! wrote to; a conversation we start goes through the default provider's number
//! (`WHATSAPP_PROVIDER`). The router is itself a [`WhatsAppSender`], so nothing above it knows
//! how many providers run or which.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Recipient, SenderError, WhatsAppSender};
use crate::config::BusinessNumber;
use crate::domain::{OutboundMessage, WhatsAppProvider};

/// Where a message to one customer leaves from, and who answers there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub provider: WhatsAppProvider,
    /// The business number it leaves from (`None` only when none is configured at all).
    pub business_number: Option<String>,
    /// The agent profile of that number, if it names one.
    pub profile: Option<String>,
}

/// One provider's sender, for one business number or (`number: None`) for any of its numbers.
pub struct Lane {
    pub provider: WhatsAppProvider,
    pub number: Option<String>,
    pub sender: Arc<dyn WhatsAppSender>,
}

pub struct ProviderRouter {
    lanes: Vec<Lane>,
    /// Business numbers of the running providers, each with its provider and profile.
    numbers: Vec<BusinessNumber>,
    default_provider: WhatsAppProvider,
    default_number: Option<String>,
}

impl ProviderRouter {
    /// `lanes` must hold at least one lane of `default_provider`; `numbers` of providers
    /// without a lane are dropped (and warned about) so that no number routes to a provider
    /// that is not running.
    pub fn new(
        lanes: Vec<Lane>,
        numbers: Vec<BusinessNumber>,
        default_provider: WhatsAppProvider,
        default_number: Option<String>,
    ) -> Self {
        let running = |p: WhatsAppProvider| lanes.iter().any(|l| l.provider == p);
        let numbers = numbers
            .into_iter()
            .filter(|n| {
                let keep = running(n.provider);
                if !keep {
                    tracing::warn!(number = %n.id, provider = ?n.provider, "WHATSAPP_NUMBERS names a number of a provider that is not configured; ignored");
                }
                keep
            })
            .collect();
        Self {
            lanes,
            numbers,
            default_provider,
            default_number,
        }
    }

    pub fn default_provider(&self) -> WhatsAppProvider {
        self.default_provider
    }

    /// The providers that run, in a stable order.
    pub fn providers(&self) -> Vec<WhatsAppProvider> {
        let mut providers: Vec<_> = self.lanes.iter().map(|l| l.provider).collect();
        providers.sort();
        providers.dedup();
        providers
    }

    /// The route for a customer who last wrote to `wrote_to` (`None`: they never wrote).
    pub fn route(&self, wrote_to: Option<&str>) -> Route {
        if let Some(number) = wrote_to {
            if let Some(known) = self.numbers.iter().find(|n| n.id == number) {
                return Route {
                    provider: known.provider,
                    business_number: Some(known.id.clone()),
                    profile: known.profile.clone(),
                };
            }
            // One provider running: any number the customer reached is its own, listed or not.
            if self.providers().len() == 1 {
                return Route {
                    provider: self.default_provider,
                    business_number: Some(number.to_owned()),
                    profile: None,
                };
            }
            tracing::warn!(
                business_number = number,
                "the customer wrote to a business number no provider claims (WHATSAPP_NUMBERS); replying from the default number"
            );
        }
        let profile = self.default_number.as_deref().and_then(|d| {
            self.numbers
                .iter()
                .find(|n| n.id == d)
                .and_then(|n| n.profile.clone())
        });
        Route {
            provider: self.default_provider,
            business_number: self.default_number.clone(),
            profile,
        }
    }

    /// The sender for `route`: the lane of its number, else its provider's general lane.
    fn lane(&self, route: &Route) -> Result<&Lane, SenderError> {
        let of_provider = |l: &&Lane| l.provider == route.provider;
        self.lanes
            .iter()
            .filter(of_provider)
            .find(|l| l.number.is_some() && l.number == route.business_number)
            .or_else(|| {
                self.lanes
                    .iter()
                    .filter(of_provider)
                    .find(|l| l.number.is_none())
            })
            .or_else(|| self.lanes.iter().find(of_provider))
            .ok_or(SenderError::NotConfigured("the WhatsApp provider"))
    }
}

#[async_trait]
impl WhatsAppSender for ProviderRouter {
    fn provider(&self) -> WhatsAppProvider {
        self.default_provider
    }

    async fn send(&self, to: &Recipient, message: &OutboundMessage) -> Result<String, SenderError> {
        let route = self.route(to.business_number.as_deref());
        let lane = self.lane(&route)?;
        let to = Recipient {
            address: to.address.clone(),
            business_number: route.business_number,
        };
        lane.sender.send(&to, message).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::domain::WhatsAppProvider::{Acs, Meta};

    /// Which lane sent, from which number.
    type Sent = Arc<Mutex<Vec<(&'static str, Option<String>)>>>;

    /// Records which lane sent what, from which number.
    struct Recording {
        name: &'static str,
        provider: WhatsAppProvider,
        sent: Sent,
    }

    #[async_trait]
    impl WhatsAppSender for Recording {
        fn provider(&self) -> WhatsAppProvider {
            self.provider
        }
        async fn send(&self, to: &Recipient, _: &OutboundMessage) -> Result<String, SenderError> {
            self.sent
                .lock()
                .unwrap()
                .push((self.name, to.business_number.clone()));
            Ok(format!("{}-id", self.name))
        }
    }

    fn number(provider: WhatsAppProvider, id: &str, profile: Option<&str>) -> BusinessNumber {
        BusinessNumber {
            provider,
            id: id.into(),
            profile: profile.map(str::to_owned),
        }
    }

    fn both(default: WhatsAppProvider, default_number: &str) -> (ProviderRouter, Sent) {
        let sent: Sent = Arc::default();
        let lane = |name, provider, number: Option<&str>| Lane {
            provider,
            number: number.map(str::to_owned),
            sender: Arc::new(Recording {
                name,
                provider,
                sent: sent.clone(),
            }),
        };
        let router = ProviderRouter::new(
            vec![
                lane("acs", Acs, None),
                lane("meta-111", Meta, Some("111")),
                lane("meta-222", Meta, Some("222")),
            ],
            vec![
                number(Acs, "chan-1", Some("support")),
                number(Meta, "111", None),
                number(Meta, "222", Some("sales")),
            ],
            default,
            Some(default_number.into()),
        );
        (router, sent)
    }

    async fn send_to(router: &ProviderRouter, wrote_to: Option<&str>) {
        let to = Recipient {
            address: "14254360097".into(),
            business_number: router.route(wrote_to).business_number,
        };
        router
            .send(&to, &OutboundMessage::Text { text: "hi".into() })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn replies_leave_through_the_owner_of_the_number_the_customer_wrote_to() {
        let (router, sent) = both(Acs, "chan-1");
        send_to(&router, Some("222")).await;
        send_to(&router, Some("chan-1")).await;
        send_to(&router, Some("111")).await;
        // We start the conversation: the default provider's number.
        send_to(&router, None).await;
        // A number nobody claims while two providers run: the default number, not a guess.
        send_to(&router, Some("unlisted")).await;
        assert_eq!(
            *sent.lock().unwrap(),
            [
                ("meta-222", Some("222".into())),
                ("acs", Some("chan-1".into())),
                ("meta-111", Some("111".into())),
                ("acs", Some("chan-1".into())),
                ("acs", Some("chan-1".into())),
            ]
        );
        assert_eq!(router.route(Some("222")).profile.as_deref(), Some("sales"));
        assert_eq!(router.route(Some("111")).profile, None);
        assert_eq!(router.route(None).profile.as_deref(), Some("support"));
        assert_eq!(router.providers(), [Acs, Meta]);

        let (router, sent) = both(Meta, "111");
        send_to(&router, None).await;
        assert_eq!(*sent.lock().unwrap(), [("meta-111", Some("111".into()))]);
    }

    #[tokio::test]
    async fn with_one_provider_any_number_is_its_own_and_foreign_entries_are_dropped() {
        let sent: Sent = Arc::default();
        let router = ProviderRouter::new(
            vec![Lane {
                provider: Acs,
                number: None,
                sender: Arc::new(Recording {
                    name: "acs",
                    provider: Acs,
                    sent: sent.clone(),
                }),
            }],
            vec![number(Meta, "111", Some("sales"))],
            Acs,
            Some("chan-1".into()),
        );
        send_to(&router, Some("chan-9")).await;
        // Meta is not running: its number is not routed to it.
        let route = router.route(Some("111"));
        assert_eq!(route.provider, Acs);
        assert_eq!(route.profile, None);
        assert_eq!(*sent.lock().unwrap(), [("acs", Some("chan-9".into()))]);
    }
}
