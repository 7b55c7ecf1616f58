//! Which provider a message leaves through. Every business number belongs to one provider
//! (an ACS channel registration id, a Meta phone number id) and may name the agent profile that
//! answers it (`WHATSAPP_NUMBERS`). A reply goes through the owner of the number the customer
//! wrote to; a conversation we start goes through the default provider's number
//! (`WHATSAPP_PROVIDER`). Inbound media is fetched, and read receipts sent, through the
//! provider (and number) a message arrived on; readiness is every running provider's. The router
//! is itself a [`WhatsAppSender`], so nothing above it knows how many providers run or which.

use std::sync::Arc;

use async_trait::async_trait;

use super::{FetchedMedia, Recipient, SenderError, WhatsAppSender};
use crate::config::BusinessNumber;
use crate::domain::{InboundMedia, OutboundMessage, WhatsAppProvider};

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

    /// Where a message that arrived through `provider` at `business_number` came from: that
    /// provider when it runs (a listed number's profile only when the number is that
    /// provider's), else the owner of the number as for [`Self::route`]. Its media is
    /// fetched and its read receipt sent through the lane this picks, so an ACS message never
    /// goes to Graph and a Meta message goes to the Graph number it arrived on.
    pub fn route_inbound(
        &self,
        provider: Option<WhatsAppProvider>,
        business_number: Option<&str>,
    ) -> Route {
        match provider {
            Some(p) if self.lanes.iter().any(|l| l.provider == p) => Route {
                provider: p,
                business_number: business_number.map(str::to_owned),
                profile: business_number.and_then(|b| {
                    self.numbers
                        .iter()
                        .find(|n| n.id == b && n.provider == p)
                        .and_then(|n| n.profile.clone())
                }),
            },
            _ => self.route(business_number),
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

    /// Through the provider the message arrived on (a Meta message: the sender of its number).
    async fn download_media(
        &self,
        via: &Route,
        media: &InboundMedia,
    ) -> Result<FetchedMedia, SenderError> {
        self.lane(via)?.sender.download_media(via, media).await
    }

    /// Through the provider and number the message arrived on (Meta marks it read on the
    /// number it was written to).
    async fn mark_read(&self, via: &Route, message_id: &str) -> Result<(), SenderError> {
        self.lane(via)?.sender.mark_read(via, message_id).await
    }

    /// Every running provider's readiness: failing when any fails (each reason once: the Meta
    /// senders share one token), `None` when none has anything to report. Asked one lane after
    /// the other, so the Meta lanes after the one that probed an expired token see its result.
    async fn readiness(&self) -> Option<Result<(), String>> {
        let mut reported = false;
        let mut problems: Vec<String> = Vec::new();
        for lane in &self.lanes {
            let Some(answer) = lane.sender.readiness().await else {
                continue;
            };
            reported = true;
            if let Err(problem) = answer
                && !problems.contains(&problem)
            {
                problems.push(problem);
            }
        }
        match (reported, problems.is_empty()) {
            (false, _) => None,
            (true, true) => Some(Ok(())),
            (true, false) => Some(Err(problems.join("; "))),
        }
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
            .send(&to, &OutboundMessage::text("hi"))
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

    /// A lane reporting a fixed readiness.
    struct Ready(WhatsAppProvider, Option<Result<(), String>>);

    #[async_trait]
    impl WhatsAppSender for Ready {
        fn provider(&self) -> WhatsAppProvider {
            self.0
        }
        async fn send(&self, _: &Recipient, _: &OutboundMessage) -> Result<String, SenderError> {
            Ok("id".into())
        }
        async fn readiness(&self) -> Option<Result<(), String>> {
            self.1.clone()
        }
    }

    fn ready_router(lanes: Vec<(WhatsAppProvider, Option<Result<(), String>>)>) -> ProviderRouter {
        let lanes = lanes
            .into_iter()
            .map(|(provider, ready)| Lane {
                provider,
                number: None,
                sender: Arc::new(Ready(provider, ready)),
            })
            .collect();
        ProviderRouter::new(lanes, Vec::new(), Acs, None)
    }

    #[tokio::test]
    async fn readiness_is_every_providers_with_each_reason_once() {
        // ACS alone reports nothing (Meta does not run).
        assert_eq!(ready_router(vec![(Acs, None)]).readiness().await, None);
        assert_eq!(
            ready_router(vec![(Acs, None), (Meta, Some(Ok(())))])
                .readiness()
                .await,
            Some(Ok(()))
        );
        let expired = || Some(Err("token expired".to_owned()));
        assert_eq!(
            ready_router(vec![(Acs, None), (Meta, expired()), (Meta, expired())])
                .readiness()
                .await,
            Some(Err("token expired".to_owned()))
        );
        assert_eq!(
            ready_router(vec![(Acs, Some(Err("acs down".into()))), (Meta, expired())])
                .readiness()
                .await,
            Some(Err("acs down; token expired".to_owned()))
        );
    }

    #[test]
    fn an_inbound_message_keeps_the_provider_it_arrived_through() {
        let (router, _) = both(Meta, "111");
        // Listed numbers: their provider and profile.
        let via = router.route_inbound(Some(Meta), Some("222"));
        assert_eq!(
            (via.provider, via.profile.as_deref()),
            (Meta, Some("sales"))
        );
        // An ACS channel nobody listed: still ACS (by number alone it would be the default).
        let via = router.route_inbound(Some(Acs), Some("chan-9"));
        assert_eq!(
            (via.provider, via.business_number.as_deref()),
            (Acs, Some("chan-9"))
        );
        assert_eq!(router.route(Some("chan-9")).provider, Meta);
        // A number listed for the other provider lends it no profile.
        assert_eq!(
            router.route_inbound(Some(Meta), Some("chan-1")).profile,
            None
        );
        // Entries recorded without a provider: the owner of the number.
        assert_eq!(router.route_inbound(None, Some("chan-1")).provider, Acs);
        // A provider that does not run: as for a reply.
        let acs_only = ready_router(vec![(Acs, None)]);
        assert_eq!(
            acs_only.route_inbound(Some(Meta), Some("111")).provider,
            Acs
        );
    }
}
