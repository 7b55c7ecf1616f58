"""Project-specific assertions on infra/ (python-hcl2), for what neither the loader nor checkov knows.

Each check guards a mistake that breaks the product in Azure but passes every generic tool:
- exactly one Event Grid system topic on the ACS resource (a second one is rejected by Azure);
- webhook subscriptions on the app's STABLE ingress FQDN (latest_revision_fqdn changes on every deploy),
  with ?code=<the app's EVENT_GRID_SECRET>, the contract paths, EventGridSchema, retry 30/1440 and
  dead-lettering to a hardened storage container;
- liveness /healthz and readiness /readyz on the ingress port;
- the container's environment variables == the provided_by_infra names of infra/app-settings.json,
  secrets only through Key Vault references;
- every var./local./resource/data reference resolves (terraform validate cannot run offline);
- Cosmos containers, partition key and TTLs; providers pinned; outputs azd needs; no secret in outputs.

Usage: python infra/tests/assert_infra.py [INFRA_DIR]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import hcl2

OPTIONS = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)

WHATSAPP_EVENTS = {
    "Microsoft.Communication.AdvancedMessageReceived",
    "Microsoft.Communication.AdvancedMessageDeliveryStatusUpdated",
}
INCOMING_CALL_EVENTS = {"Microsoft.Communication.IncomingCall"}
WHATSAPP_PATH = "/api/v1/channels/whatsapp/webhook"
INCOMING_CALL_PATH = "/api/v1/calls/incoming"
APP_PORT = 8080
COSMOS_CONTAINERS = {"customers", "inbox", "messages", "handoffs", "claims"}
REQUIRED_OUTPUTS = {
    "AZURE_RESOURCE_GROUP",
    "AZURE_CONTAINER_REGISTRY_ENDPOINT",
    "SERVICE_API_URI",
    "WHATSAPP_WEBHOOK_URL",
    "INCOMING_CALL_WEBHOOK_URL",
}


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{what}{': ' + detail if detail else ''}")
        return ok


# --- loading ----------------------------------------------------------------------------------------

class Config:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.files = sorted(directory.glob("*.tf"))
        self.resources: dict[str, dict[str, dict]] = {}
        self.data: dict[str, dict[str, dict]] = {}
        self.locals: dict[str, object] = {}
        self.variables: dict[str, dict] = {}
        self.outputs: dict[str, dict] = {}
        self.terraform: list[dict] = []
        self.duplicates: list[str] = []
        self.raw: dict[Path, str] = {}
        for path in self.files:
            text = path.read_text()
            self.raw[path] = text
            with path.open() as handle:
                doc = hcl2.load(handle, serialization_options=OPTIONS)
            for block in doc.get("resource", []):
                self._add(self.resources, block, "resource")
            for block in doc.get("data", []):
                self._add(self.data, block, "data")
            for block in doc.get("locals", []):
                for name, value in block.items():
                    if name in self.locals:
                        self.duplicates.append(f"local.{name}")
                    self.locals[name] = value
            for block in doc.get("variable", []):
                self.variables.update(block)
            for block in doc.get("output", []):
                self.outputs.update(block)
            self.terraform.extend(doc.get("terraform", []))

    def _add(self, into: dict, block: dict, kind: str) -> None:
        for rtype, named in block.items():
            for name, body in named.items():
                if name in into.setdefault(rtype, {}):
                    self.duplicates.append(f"{kind} {rtype}.{name}")
                into[rtype][name] = body

    def resource(self, rtype: str, name: str | None = None) -> dict:
        named = self.resources.get(rtype, {})
        if name is None:
            return named
        return named.get(name, {})

    def expand_locals(self, text: str, depth: int = 0) -> str:
        """Inline ${local.x} where x is a plain string, so URL templates can be read whole."""
        def replace(match: re.Match) -> str:
            value = self.locals.get(match.group(1))
            if isinstance(value, str):
                return self.expand_locals(value, depth + 1) if depth < 8 else value
            return match.group(0)

        return re.sub(r"\$\{local\.([A-Za-z0-9_]+)\}", replace, text)


def strings(value) -> list[str]:
    """Every string inside a parsed value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def first(value):
    return value[0] if isinstance(value, list) and value else (value if isinstance(value, dict) else {})


def strip_comments(text: str) -> str:
    out = []
    for line in text.splitlines():
        in_string = False
        cut = len(line)
        i = 0
        while i < len(line):
            ch = line[i]
            if ch == '"' and (i == 0 or line[i - 1] != "\\"):
                in_string = not in_string
            elif not in_string and (ch == "#" or line.startswith("//", i)):
                cut = i
                break
            i += 1
        out.append(line[:cut])
    return "\n".join(out)


# --- checks -----------------------------------------------------------------------------------------

def check_references(cfg: Config, r: Report) -> None:
    text = "\n".join(strip_comments(t) for t in cfg.raw.values())
    for name in sorted(set(re.findall(r"\bvar\.([A-Za-z0-9_]+)", text))):
        r.check(name in cfg.variables, "reference to an undeclared variable", f"var.{name}")
    for name in sorted(set(re.findall(r"\blocal\.([A-Za-z0-9_]+)", text))):
        r.check(name in cfg.locals, "reference to an undeclared local", f"local.{name}")
    for rtype, name in sorted(set(re.findall(r"\bdata\.([a-z0-9_]+)\.([A-Za-z0-9_]+)", text))):
        r.check(name in cfg.data.get(rtype, {}), "reference to an undeclared data source", f"data.{rtype}.{name}")
    pattern = r"(?<![\w.\"])((?:azurerm|azapi|random|time)_[a-z0-9_]+)\.([A-Za-z0-9_]+)"
    for rtype, name in sorted(set(re.findall(pattern, text))):
        r.check(name in cfg.resources.get(rtype, {}), "reference to an undeclared resource", f"{rtype}.{name}")
    r.check(not cfg.duplicates, "duplicate declarations", ", ".join(cfg.duplicates))
    for name, body in cfg.variables.items():
        r.check("type" in body and "description" in body, "variable without type or description", name)


def check_providers(cfg: Config, r: Report) -> None:
    required = {}
    for block in cfg.terraform:
        for rp in block.get("required_providers", []):
            required.update(rp)
    for provider in ("azurerm", "azapi"):
        spec = required.get(provider, {})
        version = spec.get("version", "") if isinstance(spec, dict) else ""
        r.check(bool(re.fullmatch(r"=\s*\d+\.\d+\.\d+", version)), "provider not pinned to an exact version",
                f"{provider} version {version!r}")


def check_event_grid(cfg: Config, r: Report) -> None:
    topics = [("azurerm_eventgrid_system_topic", n, b) for n, b in cfg.resource("azurerm_eventgrid_system_topic").items()]
    for name, body in cfg.resource("azapi_resource").items():
        if str(body.get("type", "")).lower().startswith("microsoft.eventgrid/systemtopics@"):
            topics.append(("azapi_resource", name, body))
    if not r.check(len(topics) == 1, "exactly one Event Grid system topic (one per ACS resource is allowed)",
                   f"found {len(topics)}: {[f'{t}.{n}' for t, n, _ in topics]}"):
        return
    ttype, tname, topic = topics[0]
    r.check(topic.get("topic_type") == "Microsoft.Communication.CommunicationServices",
            "system topic is on the ACS resource", str(topic.get("topic_type")))
    r.check(bool(first(topic.get("identity")).get("type")), "system topic has a managed identity (dead-lettering)")

    subs = cfg.resource("azurerm_eventgrid_system_topic_event_subscription")
    r.check(not cfg.resource("azurerm_eventgrid_event_subscription"),
            "no azurerm_eventgrid_event_subscription (use the system topic's subscriptions)")
    seen_events: set[str] = set()
    secret_refs = set()
    for name, sub in subs.items():
        where = f"subscription {name}"
        r.check(sub.get("system_topic") == f"${{{ttype}.{tname}.name}}", f"{where} hangs off the one system topic",
                str(sub.get("system_topic")))
        events = set(sub.get("included_event_types") or [])
        seen_events |= events
        if events and events <= WHATSAPP_EVENTS:
            path = WHATSAPP_PATH
        elif events and events <= INCOMING_CALL_EVENTS:
            path = INCOMING_CALL_PATH
        else:
            r.check(False, f"{where} mixes or lacks event types", str(sorted(events)))
            continue
        r.check(sub.get("event_delivery_schema") == "EventGridSchema", f"{where} uses EventGridSchema")
        hook = first(sub.get("webhook_endpoint"))
        url = cfg.expand_locals(str(hook.get("url", "")))
        match = re.fullmatch(
            r"https://\$\{(azurerm_container_app\.[A-Za-z0-9_]+)\.ingress\[0\]\.fqdn\}(/[^?]*)\?code=\$\{([^}]+)\}", url)
        r.check("latest_revision_fqdn" not in url, f"{where} does not use latest_revision_fqdn", url)
        if r.check(match is not None, f"{where} URL is https://<ingress[0].fqdn><path>?code=<secret>", url):
            app_ref, got_path, secret = match.groups()
            r.check(got_path == path, f"{where} path", f"{got_path} != {path}")
            r.check(app_ref.split(".")[1] in cfg.resource("azurerm_container_app"), f"{where} points at a declared app")
            secret_refs.add(secret)
        retry = first(sub.get("retry_policy"))
        r.check(retry.get("max_delivery_attempts") == 30 and retry.get("event_time_to_live") == 1440,
                f"{where} retry policy 30 attempts / 1440 minutes", str(retry))
        dead = first(sub.get("storage_blob_dead_letter_destination"))
        r.check(bool(dead.get("storage_account_id")) and bool(dead.get("storage_blob_container_name")),
                f"{where} dead-letters to a blob container")
        r.check(bool(first(sub.get("dead_letter_identity")).get("type")), f"{where} dead-letters with a managed identity")
        check_dead_letter_storage(cfg, r, where, dead)
    r.check(WHATSAPP_EVENTS <= seen_events, "WhatsApp events are subscribed", str(sorted(seen_events)))
    r.check(INCOMING_CALL_EVENTS <= seen_events, "IncomingCall is subscribed (not left to manual setup)")
    # The ?code= must be the very value the app receives as EVENT_GRID_SECRET.
    secret_env = cfg.locals.get("app_secret_env", {}).get("EVENT_GRID_SECRET", {})
    kv_name = secret_env.get("secret") if isinstance(secret_env, dict) else None
    kv_value = cfg.locals.get("key_vault_secret_values", {}).get(kv_name, "") if kv_name else ""
    r.check(len(secret_refs) == 1 and f"${{{next(iter(secret_refs), '')}}}" == kv_value,
            "?code= is the secret the app gets as EVENT_GRID_SECRET", f"{secret_refs} vs {kv_value!r}")


def check_dead_letter_storage(cfg: Config, r: Report, where: str, dead: dict) -> None:
    ref = re.fullmatch(r"\$\{azurerm_storage_account\.([A-Za-z0-9_]+)\.id\}", str(dead.get("storage_account_id", "")))
    if not r.check(ref is not None, f"{where} dead-letter account is an azurerm_storage_account of this config"):
        return
    account = cfg.resource("azurerm_storage_account", ref.group(1))
    expected = {
        "allow_nested_items_to_be_public": False,
        "min_tls_version": "TLS1_2",
        "https_traffic_only_enabled": True,
        "shared_access_key_enabled": False,
    }
    for key, value in expected.items():
        r.check(account.get(key) == value, f"dead-letter storage {key} = {value}", str(account.get(key)))
    container_ref = re.fullmatch(r"\$\{azurerm_storage_container\.([A-Za-z0-9_]+)\.name\}",
                                 str(dead.get("storage_blob_container_name", "")))
    if r.check(container_ref is not None, f"{where} dead-letter container is declared here"):
        container = cfg.resource("azurerm_storage_container", container_ref.group(1))
        r.check(container.get("container_access_type", "private") == "private", "dead-letter container is private")


def check_container_app(cfg: Config, r: Report, settings_path: Path, azure_yaml: Path) -> None:
    apps = cfg.resource("azurerm_container_app")
    if not r.check(len(apps) == 1, "one container app", str(list(apps))):
        return
    app = next(iter(apps.values()))
    everything = "\n".join(strings([cfg.resources, cfg.locals, cfg.outputs]))
    r.check("latest_revision_fqdn" not in everything, "latest_revision_fqdn is not used anywhere")

    ingress = first(app.get("ingress"))
    r.check(ingress.get("external_enabled") is True, "ingress is external")
    r.check(ingress.get("target_port") == APP_PORT, f"ingress target port {APP_PORT}", str(ingress.get("target_port")))
    r.check(ingress.get("allow_insecure_connections") in (None, False), "ingress is HTTPS only")

    template = first(app.get("template"))
    r.check("min_replicas" in template and "max_replicas" in template, "min/max replicas set")
    r.check(bool(template.get("http_scale_rule")), "HTTP concurrency scale rule")
    containers = template.get("container") or []
    if not r.check(len(containers) == 1, "one container in the app"):
        return
    container = containers[0]
    for probe, path in (("liveness_probe", "/healthz"), ("readiness_probe", "/readyz")):
        body = first(container.get(probe))
        r.check(f'"{path}"' in str(body.get("path", "")) or body.get("path") == path, f"{probe} on {path}",
                str(body.get("path")))
        r.check(body.get("port") == APP_PORT, f"{probe} on port {APP_PORT}", str(body.get("port")))

    tags = str(app.get("tags", ""))
    service = re.search(r'"?azd-service-name"?\s*=\s*([^,}]+)', tags)
    yaml_text = azure_yaml.read_text() if azure_yaml.exists() else ""
    services = re.search(r"^services:\s*\n\s+([A-Za-z0-9_-]+):", yaml_text, re.M)
    if r.check(service is not None and services is not None, "azd-service-name tag and azure.yaml service exist"):
        value = service.group(1).strip().strip('"')
        local_ref = re.fullmatch(r"local\.([A-Za-z0-9_]+)", value)
        if local_ref:
            value = str(cfg.locals.get(local_ref.group(1), ""))
        r.check(value == services.group(1), "azd-service-name tag matches the azure.yaml service",
                f"{value} != {services.group(1)}")

    check_environment(cfg, r, container, settings_path)


def check_environment(cfg: Config, r: Report, container: dict, settings_path: Path) -> None:
    plain: set[str] = set()
    secret: set[str] = set()
    for env in container.get("env") or []:  # static env blocks, if any
        (secret if env.get("secret_name") else plain).add(str(env.get("name")))
    for dynamic in container.get("dynamic") or []:
        for kind, body in dynamic.items():
            if kind != "env":
                continue
            source = re.search(r"in local\.([A-Za-z0-9_]+)", str(body.get("for_each", "")))
            table = cfg.locals.get(source.group(1)) if source else None
            if not r.check(isinstance(table, dict), "dynamic env iterates over a map local", str(body.get("for_each"))):
                continue
            content = first(body.get("content"))
            (secret if "secret_name" in content else plain).update(table.keys())
            if "value" in content:
                r.check(all(isinstance(v, dict) and "value" in v and "enabled" in v for v in table.values()),
                        "plain settings have enabled + value")
            if "secret_name" in content:
                r.check(all(isinstance(v, dict) and "secret" in v and "enabled" in v for v in table.values()),
                        "secret settings have enabled + secret")
    settings = json.loads(settings_path.read_text())["settings"]
    names = [s["name"] for s in settings]
    r.check(len(names) == len(set(names)), "app-settings.json has no duplicate names")
    provided = {s["name"] for s in settings if s["provided_by_infra"]}
    flagged_secret = {s["name"] for s in settings if s["secret"]}
    set_by_app = plain | secret
    r.check(not (set_by_app - provided), "every env var of the container app is in app-settings.json (provided_by_infra)",
            str(sorted(set_by_app - provided)))
    r.check(not (provided - set_by_app), "every provided_by_infra setting is set on the container app",
            str(sorted(provided - set_by_app)))
    r.check(not (secret - flagged_secret), "Key Vault-backed env vars are marked secret", str(sorted(secret - flagged_secret)))
    r.check(not ((flagged_secret & provided) - secret), "secret settings are set only through Key Vault references",
            str(sorted((flagged_secret & provided) - secret)))
    r.check(plain.isdisjoint(secret), "no env var is both plain and secret", str(sorted(plain & secret)))
    # Secrets of the app are Key Vault references with an identity, never inline values.
    app = next(iter(cfg.resource("azurerm_container_app").values()))
    for dynamic in app.get("dynamic") or []:
        for kind, body in dynamic.items():
            if kind == "secret":
                content = first(body.get("content"))
                r.check("key_vault_secret_id" in content and "identity" in content and "value" not in content,
                        "container app secrets are Key Vault references read with an identity", str(content))
    r.check(not app.get("secret"), "no inline container app secret blocks")


def check_cosmos(cfg: Config, r: Report) -> None:
    accounts = cfg.resource("azurerm_cosmosdb_account")
    if not r.check(len(accounts) == 1, "one Cosmos DB account"):
        return
    account = next(iter(accounts.values()))
    r.check(account.get("local_authentication_disabled") is True, "Cosmos DB key auth disabled")
    containers = cfg.resource("azurerm_cosmosdb_sql_container")
    if len(containers) == 1 and "for_each" in next(iter(containers.values())):
        body = next(iter(containers.values()))
        source = re.search(r"local\.([A-Za-z0-9_]+)", str(body.get("for_each")))
        table = cfg.locals.get(source.group(1), {}) if source else {}
        r.check(set(table) == COSMOS_CONTAINERS, "Cosmos containers", str(sorted(table)))
        r.check(body.get("partition_key_paths") == ["/customerId"], "partition key /customerId")
        ttl = {name: spec.get("default_ttl") for name, spec in table.items()}
        r.check(ttl.get("claims") == -1, "claims TTL -1 (per item)", str(ttl.get("claims")))
        inbox = ttl.get("inbox")
        default = cfg.variables.get(str(inbox)[6:-1], {}).get("default") if str(inbox).startswith("${var.") else inbox
        r.check(default == 604800, "inbox TTL defaults to 7 days", str(inbox))
    else:
        names = {b.get("name") for b in containers.values()}
        r.check(names == COSMOS_CONTAINERS, "Cosmos containers", str(sorted(map(str, names))))
    roles = cfg.resource("azurerm_cosmosdb_sql_role_assignment")
    r.check(any("00000000-0000-0000-0000-000000000002" in str(b.get("role_definition_id")) for b in roles.values()),
            "Cosmos DB Built-in Data Contributor assigned")


def check_outputs_and_tfvars(cfg: Config, r: Report) -> None:
    missing = REQUIRED_OUTPUTS - set(cfg.outputs)
    r.check(not missing, "outputs azd and the hooks need", str(sorted(missing)))
    for name, body in cfg.outputs.items():
        value = cfg.expand_locals(str(body.get("value", "")))
        r.check("random_password" not in value and "code=" not in value and "primary_access_key" not in value,
                "no secret in outputs", name)
    tfvars = cfg.dir / "main.tfvars.json"
    if r.check(tfvars.exists(), "infra/main.tfvars.json exists"):
        values = json.loads(tfvars.read_text())
        unknown = set(values) - set(cfg.variables)
        r.check(not unknown, "main.tfvars.json sets only declared variables", str(sorted(unknown)))
        for var in ("environment_name", "location", "principal_id"):
            r.check(var in values, f"main.tfvars.json sets {var} from azd")


def main() -> int:
    infra = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    cfg = Config(infra)
    r = Report()
    check_references(cfg, r)
    check_providers(cfg, r)
    check_event_grid(cfg, r)
    check_container_app(cfg, r, infra / "app-settings.json", infra.parent / "azure.yaml")
    check_cosmos(cfg, r)
    check_outputs_and_tfvars(cfg, r)
    for failure in r.failures:
        print(f"FAIL {failure}")
    print(f"infra assertions: {r.passed} passed, {len(r.failures)} failed")
    return 1 if r.failures else 0


if __name__ == "__main__":
    sys.exit(main())
