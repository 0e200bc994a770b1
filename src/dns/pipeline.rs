//! Handlers run in a fixed order, CoreDNS style: each either answers, passes the query on, or
//! answers later (an upstream exchange). A handler that wraps the rest (the cache) passes the
//! query on with a function that sees, and may replace, the final answer.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use super::answer::Answer;

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
}

impl Responder for Pipeline {
    fn respond<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Answer> {
        Box::pin(self.resolve(req))
    }
}

pub trait Handler: Send + Sync {
    fn name(&self) -> &'static str;
    fn handle(&self, req: &Request) -> Flow;
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

    /// Runs the handlers in order. A query no handler takes is REFUSED, as CoreDNS does for
    /// names outside every zone it serves.
    pub async fn resolve(&self, req: &Request) -> Answer {
        let mut hooks: Vec<AnswerHook> = Vec::new();
        let mut answer = None;
        // Owned only once a rewrite replaced the request.
        let mut rewritten: Option<Box<Request>> = None;
        for handler in &self.handlers {
            let current = rewritten.as_deref().unwrap_or(req);
            match handler.handle(current) {
                Flow::Answer(a) => {
                    answer = Some(a);
                    break;
                }
                Flow::Next => {}
                Flow::Pending(fut) => {
                    if let Some(a) = fut.await {
                        answer = Some(a);
                        break;
                    }
                }
                Flow::Then(hook) => hooks.push(hook),
                Flow::Rewrite(new, hook) => {
                    hooks.extend(hook);
                    rewritten = Some(new);
                }
            }
        }
        let mut answer = answer.unwrap_or_else(|| Answer::rcode(ResponseCode::Refused, ""));
        for hook in hooks.into_iter().rev() {
            answer = hook(answer);
        }
        answer
    }
}
