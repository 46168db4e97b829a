"""``@serve.ingress(app)``: a FastAPI app whose routes are methods of the deployment's class.

In each replica the app's routes declared on the class's methods are rebuilt around that
replica's instance: ``self`` becomes a dependency that yields the instance, so FastAPI validates
and documents the other parameters as usual. The replica then runs the app as any ASGI app.
"""

import functools
import inspect


def bind_asgi_app(app, instance):
    """``app`` with its class-method routes bound to ``instance`` (other apps pass unchanged)."""
    try:
        from fastapi import Depends
        from fastapi.routing import APIRoute
    except ImportError:
        return app
    methods = set()
    for klass in type(instance).__mro__:
        methods |= {value for value in vars(klass).values() if inspect.isfunction(value)}
    router = app.router
    for index, route in enumerate(router.routes):
        if not isinstance(route, APIRoute) or route.endpoint not in methods:
            continue
        router.routes[index] = APIRoute(
            route.path,
            _bound_endpoint(route.endpoint, instance, Depends),
            methods=route.methods,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=route.tags,
            dependencies=route.dependencies,
            summary=route.summary,
            description=route.description,
            responses=route.responses,
            deprecated=route.deprecated,
            name=route.name,
            response_class=route.response_class,
            include_in_schema=route.include_in_schema,
            dependency_overrides_provider=app,
        )
    app.openapi_schema = None
    app.middleware_stack = None
    return app


def _bound_endpoint(endpoint, instance, depends):
    signature = inspect.signature(endpoint)
    parameters = list(signature.parameters.values())
    # Keyword-only, so that a parameter with no default may follow `self`, which now has one.
    bound = [parameters[0].replace(default=depends(lambda: instance), kind=inspect.Parameter.KEYWORD_ONLY)]
    bound += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters[1:]]
    if inspect.iscoroutinefunction(endpoint):

        @functools.wraps(endpoint)
        async def call(**kwargs):
            return await endpoint(**kwargs)

    else:

        @functools.wraps(endpoint)
        def call(**kwargs):
            return endpoint(**kwargs)

    call.__signature__ = signature.replace(parameters=bound)
    return call
