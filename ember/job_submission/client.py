"""``JobSubmissionClient``: Ray's Jobs client, speaking Ray's REST routes to the dashboard.

client --HTTP (httpx), the cluster secret as a bearer token--> dashboard /api/jobs/...
"""

import os

from ember.job_submission.common import JobInfo, JobStatus


def resolve_address(address: str | None) -> tuple[str, str | None]:
    """(the dashboard's URL, the cluster secret to send). ``address``: the dashboard's
    ``http(s)://host:port`` or ``host:port``; ``ember://host:port`` (a head: its dashboard);
    None or "auto" (EMBER_DASHBOARD_ADDRESS, else this user's cluster on this machine)."""
    from ember.runtime import runtime_dir, transport

    if address is None or address == "auto":
        address = os.environ.get("EMBER_DASHBOARD_ADDRESS") or address
    token = transport.current_token()
    if address is None or address == "auto" or address.startswith("ember://"):
        from ember import dashboard

        if address and address.startswith("ember://"):
            head = address[len("ember://") :]
        else:
            clusters = runtime_dir.live_clusters()
            if not clusters:
                raise ConnectionError(
                    "No Ember cluster of this user runs on this machine: pass the dashboard's address, "
                    "e.g. JobSubmissionClient('http://127.0.0.1:8265')."
                )
            head = clusters[0][0]
        token = token or runtime_dir.secret_for(head)
        previous = os.environ.get(transport.TOKEN_VARIABLE)
        if token and not previous:
            os.environ[transport.TOKEN_VARIABLE] = token
        try:
            url = dashboard.url_from_head(head)
        finally:
            if token and not previous:
                os.environ.pop(transport.TOKEN_VARIABLE, None)
        if url is None:
            raise ConnectionError(f"The Ember cluster at {head} runs no dashboard.")
        return url, token
    if "://" not in address:
        address = f"http://{address}"
    return address.rstrip("/"), token


class JobSubmissionClient:
    """Submit jobs to a cluster's dashboard and follow them (Ray's ``JobSubmissionClient``).

    ``address``: the dashboard's address (see ``resolve_address``); ``headers`` and ``cookies`` go with
    every request. The cluster secret (EMBER_CLUSTER_TOKEN, or this user's cluster file) goes as a
    bearer token, which a dashboard on a network address requires.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        headers: dict | None = None,
        cookies: dict | None = None,
        verify=True,
        timeout: float = 60.0,
    ):
        import httpx

        self.address, token = resolve_address(address)
        self._headers = dict(headers or {})
        if token and not any(k.lower() == "authorization" for k in self._headers):
            self._headers["Authorization"] = f"Bearer {token}"
        self._cookies = dict(cookies or {})
        self._verify = verify
        self._timeout = timeout
        self._http = httpx.Client(
            base_url=self.address, headers=self._headers, cookies=self._cookies, verify=verify, timeout=timeout
        )
        try:
            self._request("GET", "/api/version")
        except ConnectionError:
            self._http.close()
            raise

    def _request(self, method: str, path: str, **kwargs):
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ConnectionError(f"Failed to connect to the Ember dashboard at {self.address}: {error}") from None
        if response.status_code == 401:
            raise PermissionError(f"The dashboard at {self.address} refused us: {_error_text(response)}")
        return response

    def _job_request(self, method: str, submission_id: str, suffix: str = "", **kwargs):
        response = self._request(method, f"/api/jobs/{submission_id}{suffix}", **kwargs)
        if response.status_code == 404:
            raise RuntimeError(f"Job {submission_id} does not exist.")
        if response.status_code != 200:
            raise RuntimeError(f"Request failed with status code {response.status_code}: {_error_text(response)}")
        return response.json()

    def submit_job(
        self,
        *,
        entrypoint: str,
        job_id: str | None = None,
        runtime_env: dict | None = None,
        metadata: dict | None = None,
        submission_id: str | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_num_gpus: float | None = None,
        entrypoint_memory: int | None = None,
        entrypoint_resources: dict | None = None,
    ) -> str:
        """Run ``entrypoint`` (a shell command) as a driver on the cluster; returns its submission id.
        ``entrypoint_num_cpus``/``_gpus``/``_resources`` are reserved for the driver while it runs."""
        body = {
            "entrypoint": entrypoint,
            "submission_id": submission_id or job_id,
            "runtime_env": self._portable(runtime_env) if runtime_env else None,
            "metadata": metadata,
            "entrypoint_num_cpus": entrypoint_num_cpus,
            "entrypoint_num_gpus": entrypoint_num_gpus,
            "entrypoint_memory": entrypoint_memory,
            "entrypoint_resources": entrypoint_resources,
        }
        response = self._request("POST", "/api/jobs/", json={k: v for k, v in body.items() if v is not None})
        if response.status_code != 200:
            raise RuntimeError(f"Request failed with status code {response.status_code}: {_error_text(response)}")
        return response.json()["submission_id"]

    def _portable(self, runtime_env: dict) -> dict:
        """``runtime_env`` with the working_dir, py_modules and requirements file of this machine uploaded
        (once: the dashboard is asked first whether the head has each package) and named by URI."""
        from ember.runtime.runtime_env import FIELDS, upload_local, uri_key

        if not isinstance(runtime_env, dict) or set(runtime_env) - set(FIELDS):
            return runtime_env  # the dashboard says what is wrong with it
        here = dict(runtime_env)
        elsewhere = {}  # paths not on this machine may be on the dashboard's: it packs them, or names them missing
        working_dir = here.get("working_dir")
        if working_dir is not None and uri_key(os.fspath(working_dir)) is None and not os.path.isdir(working_dir):
            elsewhere["working_dir"] = here.pop("working_dir")
        modules = here.get("py_modules") or []
        if any(uri_key(os.fspath(m)) is None and not os.path.exists(m) for m in modules):
            elsewhere["py_modules"] = here.pop("py_modules")
        pip = here.get("pip")
        if pip is not None and not isinstance(pip, (list, tuple)) and not os.path.isfile(pip):
            elsewhere["pip"] = here.pop("pip")
        portable = upload_local(here, self._upload_package)
        if elsewhere and runtime_env.get("excludes"):
            portable["excludes"] = list(runtime_env["excludes"])
        return {**portable, **{name: os.fspath(v) if name != "py_modules" else v for name, v in elsewhere.items()}}

    def _upload_package(self, kv_key: bytes, data: bytes) -> None:
        from ember.runtime.runtime_env import PACKAGE_PREFIX

        path = f"/api/packages/ember/{kv_key[len(PACKAGE_PREFIX) :].decode()}"
        if self._request("GET", path).status_code == 200:
            return
        response = self._request("PUT", path, content=data)
        if response.status_code != 200:
            raise RuntimeError(f"Uploading a package failed ({response.status_code}): {_error_text(response)}")

    def get_job_info(self, job_id: str) -> JobInfo:
        """The job's record: status, message, times, exit code, ..."""
        return JobInfo.from_json(self._job_request("GET", job_id))

    def get_job_status(self, job_id: str) -> JobStatus:
        return self.get_job_info(job_id).status

    def list_jobs(self) -> list:
        """Every job the cluster knows, oldest first."""
        response = self._request("GET", "/api/jobs/")
        if response.status_code != 200:
            raise RuntimeError(f"Request failed with status code {response.status_code}: {_error_text(response)}")
        return [JobInfo.from_json(body) for body in response.json()]

    def stop_job(self, job_id: str) -> bool:
        """Stop the job (SIGTERM, then SIGKILL); False when it had already ended."""
        return self._job_request("POST", job_id, "/stop")["stopped"]

    def delete_job(self, job_id: str) -> bool:
        """Forget an ended job and its logs; RuntimeError while it runs."""
        return self._job_request("DELETE", job_id)["deleted"]

    def get_job_logs(self, job_id: str) -> str:
        """All the job's output (stdout and stderr) so far."""
        return self._job_request("GET", job_id, "/logs")["logs"]

    async def tail_job_logs(self, job_id: str):
        """An async generator of the job's output as it comes, ending when the job ends (Ray's: over
        the dashboard's WebSocket ``/api/jobs/<id>/logs/tail``)."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosedError, InvalidStatus

        url = "ws" + self.address[len("http") :] + f"/api/jobs/{job_id}/logs/tail"
        headers = dict(self._headers)
        if self._cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self._cookies.items())
        ssl = None
        if url.startswith("wss://"):
            import ssl as ssl_module

            ssl = ssl_module.create_default_context() if self._verify else ssl_module._create_unverified_context()
        try:
            async with connect(
                url, additional_headers=headers, ssl=ssl, max_size=None, open_timeout=self._timeout
            ) as ws:
                async for message in ws:
                    yield message
                code, reason = ws.close_code, ws.close_reason
        except InvalidStatus as error:
            raise RuntimeError(f"The dashboard refused the log tail: HTTP {error.response.status_code}") from None
        except ConnectionClosedError as error:
            code, reason = (error.rcvd.code, error.rcvd.reason) if error.rcvd else (1006, "connection lost")
        except OSError as error:
            raise ConnectionError(f"Failed to connect to the Ember dashboard at {self.address}: {error}") from None
        if code == 4404:
            raise RuntimeError(reason or f"Job {job_id} does not exist.")
        if code == 1008:
            raise PermissionError(f"The dashboard at {self.address} refused us: {reason}")
        if code not in (1000, None):
            raise ConnectionError(f"The log tail of job {job_id} ended early ({code}: {reason}).")

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _error_text(response) -> str:
    try:
        return response.json().get("error") or response.text
    except ValueError:
        return response.text
