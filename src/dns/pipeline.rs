//! Handlers run in a fixed order, CoreDNS style: each either answers, passes the query on, or
//! answers later (an upstream exchange). A handler that wraps the rest (the cache) passes the
//! query on with a function that sees, and may replace, the final answer.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use super::answer::Answer;
use super::fastpath::{Meta, Peek, ResponseCache};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// One question, with what the handlers need to know about who asked and how.
#[derive(Debug, Clone)]
pub struct Request {
    pub message: Message,
    /// The question's name exactly as asked (answers echo its case).
    pub qname: Name,
    pub qtype: RecordType,
    pub src: SocketAddr,
    pub proto: Proto,
}

pub type AnswerHook = Box<dyn FnOnce(Answer) -> Answer + Send>;

pub enum Flow {
    Answer(Answer),
    /// Not mine: the next handler decides.
    Next,
    /// Mine, answered later; `None` passes on to the next handler.
    Pending(BoxFuture<'static, Option<Answer>>),
    /// Let the rest answer, then give me the final answer to inspect or replace.
    Then(AnswerHook),
    /// The rest sees this request instead (rewrite); the hook, if any, sees the final answer.
    Rewrite(Box<Request>, Option<AnswerHook>),
}

/// Whatever turns a request into an answer for the server: one pipeline, or a router that
/// picks a server block's pipeline per query. Boxed so the server holds it as a trait object.
pub trait Responder: Send + Sync {
    fn respond<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Answer>;

    /// Looks the question up in the response cache in front of everything (dns::fastpath).
    /// A hit is written into `out`.
    fn fast_get(&self, _p: &Peek, _max_len: usize, _out: &mut Vec<u8>) -> FastLookup {
        FastLookup::Off
    }

    /// Stores a response for the question; `stamp` comes from the `Miss` that preceded it,
    /// so an answer computed before a change or a reload is never stored as current.
    fn fast_put(&self, _p: &Peek, _stamp: Stamp, _response: &[u8], _meta: Meta) {}
}

/// The cluster snapshot generation and the configuration epoch an answer was made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub generation: u64,
    pub epoch: u64,
}

pub enum FastLookup {
    Hit(Meta),
    Miss(Stamp),
    /// No response cache here.
    Off,
}

/// A response cache and what invalidates it: the view's generation and the config epoch.
pub struct FastCache {
    pub cache: ResponseCache,
    pub view: std::sync::Arc<crate::cluster::ClusterView>,
    pub epoch: u64,
}

impl FastCache {
    pub fn get(&self, p: &Peek, max_len: usize, out: &mut Vec<u8>) -> FastLookup {
        // The generation is read BEFORE answering: see ClusterView::generation.
        let stamp = Stamp {
            generation: self.view.generation(),
            epoch: self.epoch,
        };
        let view = &self.view;
        let client_zone = || match p.client {
            Some(ip) => super::zonal::ClientZone::of(view.client_zone(&view.snapshot(), &ip)),
            None => super::zonal::ClientZone::Unknown,
        };
        match self
            .cache
            .get_zoned(p, stamp.generation, max_len, out, client_zone)
        {
            Some(meta) => FastLookup::Hit(meta),
            None => FastLookup::Miss(stamp),
        }
    }

    pub fn put(&self, p: &Peek, stamp: Stamp, response: &[u8], meta: Meta) {
        if stamp.epoch == self.epoch {
            self.cache.put(p, stamp.generation, response, meta);
        }
    }
}

impl Responder for Pipeline {
    fn respond<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Answer> {
        Box::pin(self.resolve(req))
    }
}

pub trait Handler: Send + Sync {
    fn name(&self) -> &'static str;
    fn handle(&self, req: &Request) -> Flow;
    /// Whether passing a query on (or wrapping it) depends only on the question and changes
    /// nothing per query: no logging, no client address, no per-query randomness. Answers
    /// from `kubernetes` reached only through pure handlers may go to the server's response
    /// cache (dns::fastpath).
    fn pure(&self) -> bool {
        false
    }
}

#[derive(Clone, Default)]
pub struct Pipeline {
    handlers: Vec<Arc<dyn Handler>>,
}

impl Pipeline {
    pub fn new(handlers: Vec<Arc<dyn Handler>>) -> Pipeline {
        Pipeline { handlers }
    }

    pub fn handler_names(&self) -> Vec<&'static str> {
        self.handlers.iter().map(|h| h.name()).collect()
    }

    /// Runs the handlers in order. A query every handler passes on is SERVFAIL, as CoreDNS's
    /// `plugin.NextOrFailure` ("no next plugin found"); only a block without plugins answers
    /// REFUSED (CoreDNS's nil plugin chain).
    pub async fn resolve(&self, req: &Request) -> Answer {
        let mut hooks: Vec<AnswerHook> = Vec::new();
        let mut answer = None;
        let mut pure = true;
        // Owned only once a rewrite replaced the request.
        let mut rewritten: Option<Box<Request>> = None;
        for handler in &self.handlers {
            let current = rewritten.as_deref().unwrap_or(req);
            match handler.handle(current) {
                Flow::Answer(mut a) => {
                    // Cluster answers, and cache hits for as long as the cache holds them.
                    a.cacheable = pure && (a.plugin == "kubernetes" || a.lease.is_some());
                    answer = Some(a);
                    break;
                }
                Flow::Next => pure &= handler.pure(),
                Flow::Pending(fut) => {
                    if let Some(a) = fut.await {
                        answer = Some(a);
                        break;
                    }
                }
                Flow::Then(hook) => {
                    pure &= handler.pure();
                    hooks.push(hook)
                }
                Flow::Rewrite(new, hook) => {
                    pure = false;
                    hooks.extend(hook);
                    rewritten = Some(new);
                }
            }
        }
        let mut answer = answer.unwrap_or_else(|| {
            let rcode = if self.handlers.is_empty() {
                ResponseCode::Refused
            } else {
                ResponseCode::ServFail
            };
            Answer::rcode(rcode, "")
        });
        for hook in hooks.into_iter().rev() {
            answer = hook(answer);
        }
        answer
    }
}
