//! Middleware around handlers: tower layers that wrap each attempt's future, see its [`Call`]
//! (the event's context) and its outcome, and may fail it or run it later. Users' own layers and
//! tower's (timeouts, concurrency limits) work as they are; layers added to the consumer wrap
//! those of a handler. A consumer without layers runs its handlers directly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use super::handler::BoxFuture;
use super::{Context, Failure, HandlerError};

/// The error of middleware services: any error. A [`Failure`] passes through as it is (such as
/// a [`HandlerError::defer`] of a circuit breaker); any other fails the attempt as a handler
/// error would, to be retried.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One attempt at an event, as middleware sees it: the event's context, and the handler's run,
/// which the innermost service awaits.
pub struct Call {
    context: Context,
    run: BoxFuture,
}

impl Call {
    /// The event and its delivery.
    pub fn context(&self) -> &Context {
        &self.context
    }
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// The innermost service of a stack: runs the handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunHandler;

impl Service<Call> for RunHandler {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        Box::pin(async move {
            call.run
                .await
                .map_err(|failure| Box::new(failure) as BoxError)
        })
    }
}

/// A stack of middleware around a handler, boxed: what a [`HandlerLayer`] wraps.
pub type Stack = BoxCloneSyncService<Call, (), BoxError>;

/// One layer, boxed: wraps a stack in one more service.
pub(crate) type Wrap = Arc<dyn Fn(Stack) -> Stack + Send + Sync>;

/// A tower layer that can wrap handlers: any whose service takes a [`Call`], answers `()`, can be
/// cloned and shared across threads, and fails with an error that converts into a [`BoxError`].
pub trait HandlerLayer:
    Layer<
        Stack,
        Service: Service<Call, Response = (), Error: Into<BoxError>, Future: Send + 'static>
                     + Clone
                     + Send
                     + Sync
                     + 'static,
    > + Send
    + Sync
    + 'static
{
}

impl<L> HandlerLayer for L where
    L: Layer<
            Stack,
            Service: Service<Call, Response = (), Error: Into<BoxError>, Future: Send + 'static>
                         + Clone
                         + Send
                         + Sync
                         + 'static,
        > + Send
        + Sync
        + 'static
{
}

/// `layer`, boxed.
pub(crate) fn wrap(layer: impl HandlerLayer) -> Wrap {
    Arc::new(move |inner| BoxCloneSyncService::new(layer.layer(inner).map_err(Into::into)))
}

/// `layers` around the handler, the first outermost; `None` without layers.
pub(crate) fn stack<'a>(layers: impl DoubleEndedIterator<Item = &'a Wrap>) -> Option<Stack> {
    let mut layers = layers.rev().peekable();
    layers.peek()?;
    Some(
        layers.fold(BoxCloneSyncService::new(RunHandler), |inner, wrap| {
            wrap(inner)
        }),
    )
}

/// Runs the handler's `run` through `stack`.
pub(crate) fn through(stack: &Stack, context: &Context, run: BoxFuture) -> BoxFuture {
    let call = Call {
        context: context.clone(),
        run,
    };
    let called = stack.clone().oneshot(call);
    Box::pin(async move {
        called
            .await
            .map_err(|error| match error.downcast::<Failure>() {
                Ok(failure) => *failure,
                Err(other) => Failure::Handler(HandlerError::from(other)),
            })
    })
}
