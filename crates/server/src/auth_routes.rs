//! `/api/auth/…`: first-run setup, sign-in and out, the session check,
//! users, service principals and per-gateway roles.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use breakwater_domain::Secret;
use breakwater_domain::access::{Group, PrincipalKind, Role, ServicePrincipal, User};
use breakwater_domain::registry::FieldPatch;
use breakwater_services::Principal;
use breakwater_services::identity::Issued;
use breakwater_services::oidc::{OidcCallback, OidcProviderInfo};
use serde::{Deserialize, Serialize};

use crate::access::{ADMIN, PUBLIC, Routes};
use crate::auth::{AuthMode, Identified, SESSION_COOKIE};
use crate::extract::{Caller, QueryPairs};
use crate::{ApiError, ApiResult, AppState};

pub(crate) fn routes() -> Routes {
    let users = "/api/auth/users/{id}/gateway-roles";
    let sps = "/api/auth/service-principals/{id}/gateway-roles";
    Routes::new()
        .post("/api/auth/setup", PUBLIC, setup)
        .post("/api/auth/login", PUBLIC, login)
        .post("/api/auth/logout", PUBLIC, logout)
        .post("/api/auth/accept-invite", PUBLIC, accept_invite)
        .post("/api/auth/register", PUBLIC, register)
        .get("/api/auth/check", PUBLIC, check)
        .get("/api/auth/oidc/providers", PUBLIC, oidc_providers)
        .get("/api/auth/oidc/login/{provider}", PUBLIC, oidc_login)
        .get("/api/auth/oidc/callback", PUBLIC, oidc_callback)
        .get("/api/auth/users", ADMIN, list_users)
        .post("/api/auth/users", ADMIN, create_user)
        .patch("/api/auth/users/{id}", ADMIN, update_user)
        .delete("/api/auth/users/{id}", ADMIN, delete_user)
        .get(users, ADMIN, user_gateway_roles)
        .put(format!("{users}/{{gw}}"), ADMIN, set_user_gateway_role)
        .delete(format!("{users}/{{gw}}"), ADMIN, delete_user_gateway_role)
        .get("/api/auth/service-principals", ADMIN, list_sps)
        .post("/api/auth/service-principals", ADMIN, create_sp)
        .delete("/api/auth/service-principals/{id}", ADMIN, delete_sp)
        .post("/api/auth/service-principals/{id}/rotate", ADMIN, rotate_sp)
        .get("/api/auth/groups", ADMIN, list_groups)
        .post("/api/auth/groups", ADMIN, create_group)
        .get("/api/auth/groups/{id}", ADMIN, get_group)
        .put("/api/auth/groups/{id}", ADMIN, update_group)
        .delete("/api/auth/groups/{id}", ADMIN, delete_group)
        .post("/api/auth/groups/{id}/members", ADMIN, add_member)
        .delete("/api/auth/groups/{id}/members/{user_id}", ADMIN, remove_member)
        .get("/api/auth/groups/{id}/gateway-roles", ADMIN, group_gateway_roles)
        .put("/api/auth/groups/{id}/gateway-roles/{gw}", ADMIN, set_group_gateway_role)
        .delete("/api/auth/groups/{id}/gateway-roles/{gw}", ADMIN, delete_group_gateway_role)
        .get(sps, ADMIN, sp_gateway_roles)
        .put(format!("{sps}/{{gw}}"), ADMIN, set_sp_gateway_role)
        .delete(format!("{sps}/{{gw}}"), ADMIN, delete_sp_gateway_role)
}

fn local_mode(state: &AppState) -> ApiResult<()> {
    if state.auth == AuthMode::Local {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "LOCAL_MODE",
            "this server runs without sign-in (--no-auth): everyone is local-admin",
        ));
    }
    Ok(())
}

fn session_cookie(state: &AppState, token: &str, max_age: u64) -> HeaderValue {
    let secure = matches!(state.auth, AuthMode::Enabled { secure_cookies: true });
    let value = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(""))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    email: String,
    password: String,
}

#[derive(Serialize)]
struct SignedIn {
    email: String,
    role: Role,
    /// Where a browser goes next: a path on this site, never elsewhere.
    redirect: String,
}

/// Only a local path (`/x`, not `//host/x` or `https://…`) is followed.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && n.len() <= 2048
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.chars().any(|c| c.is_control() || c == '\\') =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

async fn signed_in(
    state: &AppState,
    email: &str,
    password: &Secret,
    ip: Option<String>,
    next: Option<&str>,
) -> ApiResult<Response> {
    let issued = state.identity.login(email, password, ip).await?;
    Ok(with_session(state, issued, next))
}

fn with_session(state: &AppState, issued: Issued<User>, next: Option<&str>) -> Response {
    let max_age = state.identity.session_max_age().as_secs();
    let body = SignedIn { email: issued.item.email, role: issued.item.role, redirect: safe_next(next) };
    ([(header::SET_COOKIE, session_cookie(state, issued.secret.expose(), max_age))], Json(body)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    token: String,
    password: String,
}

/// Chooses a password with a one-time invite and signs in.
async fn accept_invite(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<InviteBody>,
) -> ApiResult<Response> {
    local_mode(&state)?;
    let issued =
        state.identity.accept_invite(&Secret::new(body.token), &Secret::new(body.password), caller.client_ip).await?;
    Ok(with_session(&state, issued, None))
}

/// Self-registration as a viewer, when the server allows it.
async fn register(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<Credentials>,
) -> ApiResult<Response> {
    local_mode(&state)?;
    if !state.registration {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "REGISTRATION_DISABLED",
            "this server does not take sign-ups; ask an admin for an invite",
        ));
    }
    let issued = state.identity.register(&body.email, &Secret::new(body.password), caller.client_ip).await?;
    let mut resp = with_session(&state, issued, None);
    *resp.status_mut() = StatusCode::CREATED;
    Ok(resp)
}

/// The first admin, while no user exists; signed in at once.
async fn setup(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<Credentials>,
) -> ApiResult<Response> {
    local_mode(&state)?;
    let password = Secret::new(body.password);
    state.identity.setup(&body.email, &password, caller.client_ip.clone()).await?;
    let mut resp = signed_in(&state, &body.email, &password, caller.client_ip, None).await?;
    *resp.status_mut() = StatusCode::CREATED;
    Ok(resp)
}

async fn login(
    State(state): State<AppState>,
    Caller(caller): Caller,
    q: QueryPairs,
    Json(body): Json<Credentials>,
) -> ApiResult<Response> {
    local_mode(&state)?;
    signed_in(&state, &body.email, &Secret::new(body.password), caller.client_ip, q.get("next")).await
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(t) = cookie(&headers, SESSION_COOKIE) {
        state.identity.logout(&Secret::new(t)).await?;
    }
    Ok(([(header::SET_COOKIE, session_cookie(&state, "", 0))], Json(serde_json::json!({"ok": true}))).into_response())
}

async fn check(
    State(state): State<AppState>,
    who: Option<axum::Extension<Identified>>,
) -> ApiResult<Json<serde_json::Value>> {
    let local = state.auth == AuthMode::Local;
    let needs_setup = !local && state.identity.needs_setup().await?;
    let (email, role) = match who.as_ref().map(|w| &w.0.who) {
        Some(a) => (
            match &a.principal {
                Principal::User(u) => Some(u.email.clone()),
                _ => None,
            },
            a.grants.global_role(),
        ),
        None => (None, None),
    };
    Ok(Json(serde_json::json!({
        "authenticated": who.is_some(),
        "auth_enabled": !local,
        "role": role,
        "email": email,
        "name": who.as_ref().map(|w| w.0.who.name()),
        "needs_setup": needs_setup,
        "registration_enabled": state.registration && !local,
        "local_mode": local,
        "oidc_providers": if local { Vec::new() } else { state.oidc.providers() },
    })))
}

async fn oidc_providers(State(state): State<AppState>) -> Json<Vec<OidcProviderInfo>> {
    Json(if state.auth == AuthMode::Local { Vec::new() } else { state.oidc.providers() })
}

/// Binds a sign-in in flight to the browser that started it: only its
/// digest is stored, and the callback must bring the cookie back. `Lax`
/// because the provider sends the browser back with a top-level GET.
const OIDC_COOKIE: &str = "bw_oidc";
/// Behind TLS: the `__Host-` prefix makes browsers refuse the cookie from a
/// sibling subdomain (which could otherwise plant its own sign-in), and
/// requires `Secure` and `Path=/`.
const OIDC_COOKIE_SECURE: &str = "__Host-bw_oidc";

fn oidc_cookie_name(state: &AppState) -> &'static str {
    if matches!(state.auth, AuthMode::Enabled { secure_cookies: true }) { OIDC_COOKIE_SECURE } else { OIDC_COOKIE }
}

fn oidc_cookie(state: &AppState, value: &str, max_age: u64) -> HeaderValue {
    let secure = matches!(state.auth, AuthMode::Enabled { secure_cookies: true });
    let value = if secure {
        format!("{OIDC_COOKIE_SECURE}={value}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age}; Secure")
    } else {
        format!("{OIDC_COOKIE}={value}; HttpOnly; SameSite=Lax; Path=/api/auth/oidc; Max-Age={max_age}")
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(""))
}

fn redirect(to: &str) -> Response {
    let location = HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/"));
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

/// Sends the browser to the provider, with `?next=` kept for after sign-in
/// (a path on this site only, as for password sign-in).
async fn oidc_login(State(state): State<AppState>, Path(provider): Path<String>, q: QueryPairs) -> ApiResult<Response> {
    local_mode(&state)?;
    let start = state.oidc.begin(&provider, &safe_next(q.get("next"))).await?;
    let mut resp = redirect(&start.location);
    let max_age = state.oidc.state_ttl().as_secs();
    resp.headers_mut().append(header::SET_COOKIE, oidc_cookie(&state, start.browser_token.expose(), max_age));
    Ok(resp)
}

/// The provider's redirect back: on success the same session cookie as a
/// password sign-in and a redirect to `next`; on failure a problem body.
/// The binding cookie is cleared either way (the state is spent).
async fn oidc_callback(
    State(state): State<AppState>,
    Caller(caller): Caller,
    q: QueryPairs,
    headers: HeaderMap,
) -> Response {
    let clear = oidc_cookie(&state, "", 0);
    let result = async {
        local_mode(&state)?;
        let callback = OidcCallback {
            code: q.get("code").map(str::to_owned),
            state: q.get("state").map(str::to_owned),
            error: q.get("error").map(str::to_owned),
        };
        let browser = cookie(&headers, oidc_cookie_name(&state)).map(Secret::new);
        Ok::<_, ApiError>(state.oidc.complete(callback, browser.as_ref(), caller.client_ip).await?)
    }
    .await;
    let mut resp = match result {
        Ok(done) => {
            let mut resp = redirect(&done.next);
            let max_age = state.identity.session_max_age().as_secs();
            let session = session_cookie(&state, done.session.secret.expose(), max_age);
            resp.headers_mut().append(header::SET_COOKIE, session);
            resp
        }
        Err(e) => e.into_response(),
    };
    resp.headers_mut().append(header::SET_COOKIE, clear);
    resp
}

async fn list_users(State(state): State<AppState>) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(state.identity.users().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    email: String,
    role: Option<String>,
    password: Option<String>,
}

fn role(raw: Option<&str>, default: Role) -> ApiResult<Role> {
    raw.map_or(Ok(default), |r| Role::parse(r).map_err(|e| ApiError::bad_request("role", e.to_string())))
}

/// With a password: an account ready to sign in. Without: an account and a
/// one-time `invite_token` (shown once) for `POST /api/auth/accept-invite`.
#[derive(Serialize)]
struct UserCreated {
    #[serde(flatten)]
    user: User,
    #[serde(skip_serializing_if = "Option::is_none")]
    invite_token: Option<String>,
}

async fn create_user(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Json(body): Json<NewUserBody>,
) -> ApiResult<(StatusCode, Json<UserCreated>)> {
    let role = role(body.role.as_deref(), Role::Viewer)?;
    let created = if let Some(p) = body.password {
        UserCreated {
            user: state.identity.create_user(&actor, &body.email, role, Some(&Secret::new(p))).await?,
            invite_token: None,
        }
    } else {
        let issued = state.identity.invite_user(&actor, &body.email, role).await?;
        UserCreated { user: issued.item, invite_token: Some(issued.secret.expose().to_owned()) }
    };
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUserBody {
    role: Option<String>,
    active: Option<bool>,
    password: Option<String>,
}

/// Role, active flag, password: each optional; effective on the user's next request.
async fn update_user(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    Json(body): Json<UpdateUserBody>,
) -> ApiResult<Json<User>> {
    if let Some(r) = body.role.as_deref() {
        state.identity.set_role(&actor, &id, role(Some(r), Role::Viewer)?).await?;
    }
    if let Some(active) = body.active {
        state.identity.set_active(&actor, &id, active).await?;
    }
    if let Some(p) = body.password {
        state.identity.set_password(&actor, &id, &Secret::new(p)).await?;
    }
    let user = state.identity.users().await?.into_iter().find(|u| u.id == id);
    user.map(Json).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("user {id} not found")))
}

async fn delete_user(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    state.identity.delete_user(&actor, &id).await?;
    Ok(Json(serde_json::json!({"ok": true})))
}

#[derive(Serialize)]
struct GatewayRole {
    gateway: String,
    role: Role,
}

async fn gateway_roles(state: &AppState, kind: PrincipalKind, id: &str) -> ApiResult<Json<Vec<GatewayRole>>> {
    let roles = state.identity.gateway_roles(kind, id).await?;
    Ok(Json(roles.into_iter().map(|(gateway, role)| GatewayRole { gateway, role }).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: String,
}

async fn set_gateway_role(
    state: &AppState,
    actor: &breakwater_services::Actor,
    kind: PrincipalKind,
    id: &str,
    gw: &str,
    body: &RoleBody,
) -> ApiResult<Json<GatewayRole>> {
    let gw_name = crate::gateway_routes::gateway_name(gw)?;
    let r = role(Some(&body.role), Role::Viewer)?;
    state.identity.set_gateway_role(actor, kind, id, gw_name.as_str(), Some(r)).await?;
    Ok(Json(GatewayRole { gateway: gw_name.as_str().to_owned(), role: r }))
}

async fn user_gateway_roles(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<GatewayRole>>> {
    gateway_roles(&state, PrincipalKind::User, &id).await
}

async fn set_user_gateway_role(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((id, gw)): Path<(String, String)>,
    Json(body): Json<RoleBody>,
) -> ApiResult<Json<GatewayRole>> {
    set_gateway_role(&state, &actor, PrincipalKind::User, &id, &gw, &body).await
}

async fn delete_user_gateway_role(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((id, gw)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    state.identity.set_gateway_role(&actor, PrincipalKind::User, &id, &gw, None).await?;
    Ok(Json(serde_json::json!({"ok": true})))
}

async fn sp_gateway_roles(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Vec<GatewayRole>>> {
    gateway_roles(&state, PrincipalKind::ServicePrincipal, &id).await
}

async fn set_sp_gateway_role(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((id, gw)): Path<(String, String)>,
    Json(body): Json<RoleBody>,
) -> ApiResult<Json<GatewayRole>> {
    set_gateway_role(&state, &actor, PrincipalKind::ServicePrincipal, &id, &gw, &body).await
}

async fn delete_sp_gateway_role(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((id, gw)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    state.identity.set_gateway_role(&actor, PrincipalKind::ServicePrincipal, &id, &gw, None).await?;
    Ok(Json(serde_json::json!({"ok": true})))
}

async fn list_sps(State(state): State<AppState>) -> ApiResult<Json<Vec<ServicePrincipal>>> {
    Ok(Json(state.identity.service_principals().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSpBody {
    name: String,
    role: Option<String>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The key once: it is not stored and cannot be shown again.
#[derive(Serialize)]
struct SpWithKey {
    #[serde(flatten)]
    service_principal: ServicePrincipal,
    key: String,
}

async fn create_sp(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Json(body): Json<NewSpBody>,
) -> ApiResult<(StatusCode, Json<SpWithKey>)> {
    let r = role(body.role.as_deref(), Role::Viewer)?;
    let issued = state.identity.create_service_principal(&actor, &body.name, r, body.expires_at).await?;
    Ok((
        StatusCode::CREATED,
        Json(SpWithKey { service_principal: issued.item, key: issued.secret.expose().to_owned() }),
    ))
}

async fn rotate_sp(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SpWithKey>> {
    let issued = state.identity.rotate_service_principal(&actor, &id).await?;
    Ok(Json(SpWithKey { service_principal: issued.item, key: issued.secret.expose().to_owned() }))
}

async fn delete_sp(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    state.identity.delete_service_principal(&actor, &id).await?;
    Ok(Json(serde_json::json!({"ok": true})))
}

async fn list_groups(State(state): State<AppState>) -> ApiResult<Json<Vec<Group>>> {
    Ok(Json(state.identity.groups().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    name: Option<String>,
    #[serde(default)]
    role: FieldPatch<String>,
    #[serde(default)]
    description: FieldPatch<String>,
}

fn group_role(p: &FieldPatch<String>) -> ApiResult<FieldPatch<Role>> {
    Ok(match p {
        FieldPatch::Keep => FieldPatch::Keep,
        FieldPatch::Clear => FieldPatch::Clear,
        FieldPatch::Set(r) => FieldPatch::Set(role(Some(r), Role::Viewer)?),
    })
}

fn set_value<T>(p: FieldPatch<T>) -> Option<T> {
    match p {
        FieldPatch::Set(v) => Some(v),
        FieldPatch::Keep | FieldPatch::Clear => None,
    }
}

async fn create_group(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Json(body): Json<GroupBody>,
) -> ApiResult<(StatusCode, Json<Group>)> {
    let name = body.name.ok_or_else(|| ApiError::bad_request("name", "a group needs a name"))?;
    let r = set_value(group_role(&body.role)?);
    let description = set_value(body.description);
    Ok((StatusCode::CREATED, Json(state.identity.create_group(&actor, &name, r, description).await?)))
}

#[derive(Serialize)]
struct GroupDetail {
    #[serde(flatten)]
    group: Group,
    members: Vec<User>,
    gateway_roles: Vec<GatewayRole>,
}

async fn get_group(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<GroupDetail>> {
    let group = state.identity.group(&id).await?;
    let member_ids = state.identity.group_members(&id).await?;
    let members = state.identity.users().await?.into_iter().filter(|u| member_ids.contains(&u.id)).collect();
    let roles = state.identity.gateway_roles(PrincipalKind::Group, &id).await?;
    let gateway_roles = roles.into_iter().map(|(gateway, role)| GatewayRole { gateway, role }).collect();
    Ok(Json(GroupDetail { group, members, gateway_roles }))
}

async fn update_group(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    Json(body): Json<GroupBody>,
) -> ApiResult<Json<Group>> {
    let r = group_role(&body.role)?;
    let group = state.identity.update_group(&actor, &id, body.name.as_deref(), r, body.description).await?;
    Ok(Json(group))
}

async fn delete_group(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    state.identity.delete_group(&actor, &id).await?;
    Ok(Json(serde_json::json!({"ok": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberBody {
    user_id: String,
}

async fn add_member(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    Json(body): Json<MemberBody>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let added = state.identity.set_member(&actor, &id, &body.user_id, true).await?;
    let status = if added { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(serde_json::json!({"group_id": id, "user_id": body.user_id, "added": added}))))
}

async fn remove_member(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let removed = state.identity.set_member(&actor, &id, &user_id, false).await?;
    Ok(Json(serde_json::json!({"ok": true, "removed": removed})))
}

async fn group_gateway_roles(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<GatewayRole>>> {
    gateway_roles(&state, PrincipalKind::Group, &id).await
}

async fn set_group_gateway_role(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((id, gw)): Path<(String, String)>,
    Json(body): Json<RoleBody>,
) -> ApiResult<Json<GatewayRole>> {
    set_gateway_role(&state, &actor, PrincipalKind::Group, &id, &gw, &body).await
}

async fn delete_group_gateway_role(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path((id, gw)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    state.identity.set_gateway_role(&actor, PrincipalKind::Group, &id, &gw, None).await?;
    Ok(Json(serde_json::json!({"ok": true})))
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_stays_on_this_site_and_short() {
        assert_eq!(safe_next(Some("/sandboxes?x=1")), "/sandboxes?x=1");
        for bad in ["//evil.example", "/\\evil.example", "https://evil.example", "/a\r\nb", "sandboxes"] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(Some(&format!("/{}", "a".repeat(3000)))), "/", "a long one is dropped");
        assert_eq!(safe_next(None), "/");
    }
}
