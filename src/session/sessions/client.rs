//! [`Client`]: what the server knows about the client of a request, and binding sessions to
//! it.

use std::net::IpAddr;

use crate::session::record::{MAX_BOUND_USER_AGENT, truncate_at_char};

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
