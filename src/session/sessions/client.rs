//! [`Client`]: what the server knows about the client of a request, and binding sessions to
//! it.

use std::net::IpAddr;

use super::SessionStore;
use crate::session::data::NewReason;
use crate::session::record::{Binding, MAX_BOUND_USER_AGENT, RecordView, truncate_at_char};

/// What the server knows about the client making a request, for binding sessions to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Client<'a> {
    /// The client's address (as the server or a trusted proxy saw it).
    pub address: Option<IpAddr>,
    /// The `User-Agent` request header.
    pub user_agent: Option<&'a str>,
}

impl<'a> Client<'a> {
    /// A client with neither address nor user agent known.
    pub fn new() -> Client<'a> {
        Client::default()
    }

    /// With the client address.
    pub fn address(mut self, address: IpAddr) -> Self {
        self.address = Some(address);
        self
    }

    /// With the user agent.
    pub fn user_agent(mut self, user_agent: &'a str) -> Self {
        self.user_agent = Some(user_agent);
        self
    }

    /// The address as bound: IPv4-mapped IPv6 addresses as IPv4; empty if unknown.
    pub(super) fn address_text(&self) -> String {
        self.address
            .map(|a| a.to_canonical().to_string())
            .unwrap_or_default()
    }

    pub(super) fn user_agent_text(&self) -> &'a str {
        truncate_at_char(self.user_agent.unwrap_or(""), MAX_BOUND_USER_AGENT)
    }
}

impl SessionStore {
    pub(super) fn binding_for(&self, client: &Client<'_>) -> Binding {
        Binding {
            address: self.inner.bind_address.then(|| client.address_text()),
            user_agent: self
                .inner
                .bind_user_agent
                .then(|| client.user_agent_text().to_owned()),
        }
    }

    /// Why `view` may not be used by `client`, if it may not.
    pub(super) fn binding_mismatch(
        &self,
        view: &RecordView<'_>,
        client: &Client<'_>,
    ) -> Option<NewReason> {
        if self.inner.bind_address
            && let Some(bound) = view.address
            && bound != client.address_text()
        {
            return Some(NewReason::AddressChanged);
        }
        if self.inner.bind_user_agent
            && let Some(bound) = view.user_agent
            && bound != client.user_agent_text()
        {
            return Some(NewReason::UserAgentChanged);
        }
        None
    }
}
