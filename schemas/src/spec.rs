//! The typed fields of every known type, as data: one table drives normalization in the
//! ingress, the JSON Schema of every topic, and the sample records of `schemas/README.md`.

use crate::kind::Kind;

/// How a typed field is read from the XML and written to JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldType {
    /// A string; `""` when the element is missing.
    Text,
    /// A string, or `null` when the element is missing or empty.
    OptText,
    /// A QR-code scene: like `OptText`, without a `qrscene_` prefix.
    Scene,
    /// A number within ±`max`; the push is malformed (400) without it.
    Number { max: f64 },
    /// A number or `null`; malformed when present but not a number.
    OptNumber,
    /// An integer or `null`; malformed when present but not an integer.
    OptInt,
    /// A list of objects from an element that WeChat repeats (one item or many); each
    /// item's children are renamed by `items`, and any other child is kept under its XML name.
    List { items: &'static [Field] },
}

/// One typed field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field {
    /// The JSON name.
    pub json: &'static str,
    /// Where it is in the push: a path of element names below `<xml>` (or below a list item).
    /// The first path present wins (`MsgId` in messages, `MsgID` in some events).
    pub from: &'static [&'static [&'static str]],
    pub ty: FieldType,
    /// What it means, for the schemas and their README.
    pub doc: &'static str,
}

/// A known event or message type and its typed fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypeSpec {
    pub kind: Kind,
    /// Lower-case `Event` or `MsgType`.
    pub name: &'static str,
    pub fields: &'static [Field],
    /// What the push is, for the schemas' README.
    pub doc: &'static str,
}

const fn field(
    json: &'static str,
    from: &'static [&'static [&'static str]],
    ty: FieldType,
    doc: &'static str,
) -> Field {
    Field {
        json,
        from,
        ty,
        doc,
    }
}

const fn event(name: &'static str, doc: &'static str, fields: &'static [Field]) -> TypeSpec {
    TypeSpec {
        kind: Kind::Event,
        name,
        fields,
        doc,
    }
}

const fn component(name: &'static str, doc: &'static str, fields: &'static [Field]) -> TypeSpec {
    TypeSpec {
        kind: Kind::Component,
        name,
        fields,
        doc,
    }
}

const fn message(name: &'static str, doc: &'static str, fields: &'static [Field]) -> TypeSpec {
    TypeSpec {
        kind: Kind::Message,
        name,
        fields,
        doc,
    }
}

use FieldType::*;

const MENU_KEY: Field = field("key", &[&["EventKey"]], Text, "menu key (EventKey)");
const QR: [Field; 2] = [
    field(
        "scene",
        &[&["EventKey"]],
        Scene,
        "QR-code scene value (EventKey without `qrscene_`); null without a QR code",
    ),
    field(
        "ticket",
        &[&["Ticket"]],
        OptText,
        "QR-code ticket; null without a QR code",
    ),
];
const SCAN_CODE: [Field; 3] = [
    MENU_KEY,
    field(
        "scan_type",
        &[&["ScanCodeInfo", "ScanType"]],
        OptText,
        "code type, e.g. `qrcode`, `barcode`",
    ),
    field(
        "scan_result",
        &[&["ScanCodeInfo", "ScanResult"]],
        OptText,
        "the scanned content",
    ),
];
const PICS: [Field; 3] = [
    MENU_KEY,
    field(
        "count",
        &[&["SendPicsInfo", "Count"]],
        OptInt,
        "number of pictures",
    ),
    field(
        "pics",
        &[&["SendPicsInfo", "PicList", "item"]],
        List {
            items: &[field(
                "md5",
                &[&["PicMd5Sum"]],
                OptText,
                "MD5 of the picture",
            )],
        },
        "the pictures sent",
    ),
];
const EXPIRED: [Field; 1] = [field(
    "expired_time",
    &[&["ExpiredTime"]],
    OptInt,
    "when the qualification expires (Unix seconds)",
)];
const FAILED: [Field; 2] = [
    field(
        "fail_time",
        &[&["FailTime"]],
        OptInt,
        "when verification failed (Unix seconds)",
    ),
    field("fail_reason", &[&["FailReason"]], OptText, "why it failed"),
];
const KF: [Field; 1] = [field(
    "kf_account",
    &[&["KfAccount"]],
    OptText,
    "customer-service account",
)];
const MSG_ID: Field = field(
    "msg_id",
    &[&["MsgId"], &["MsgID"]],
    OptText,
    "WeChat's message id (MsgId)",
);
const JOB_ID: Field = field(
    "msg_id",
    &[&["MsgID"], &["MsgId"]],
    OptText,
    "id of the send job (MsgID)",
);
const STATUS: Field = field(
    "status",
    &[&["Status"]],
    OptText,
    "outcome, e.g. `success` or `err(43101)`",
);
const MEDIA: [Field; 2] = [
    field(
        "media_id",
        &[&["MediaId"]],
        OptText,
        "media id, to download the media",
    ),
    field(
        "thumb_media_id",
        &[&["ThumbMediaId"]],
        OptText,
        "thumbnail media id",
    ),
];

const fn subscriptions(
    from: &'static [&'static [&'static str]],
    items: &'static [Field],
) -> [Field; 1] {
    [field(
        "subscriptions",
        from,
        List { items },
        "one entry per template",
    )]
}
const TEMPLATE_ID: Field = field(
    "template_id",
    &[&["TemplateId"]],
    OptText,
    "subscription-message template id",
);
const SUBSCRIBE_STATUS: Field = field(
    "status",
    &[&["SubscribeStatusString"]],
    OptText,
    "`accept` or `reject`",
);

/// The authorizer AppID of an authorization event.
const AUTHORIZER: Field = field(
    "authorizer_appid",
    &[&["AuthorizerAppid"]],
    Text,
    "the authorizer's AppID (AuthorizerAppid)",
);
const AUTHORIZATION: [Field; 4] = [
    AUTHORIZER,
    field(
        "authorization_code",
        &[&["AuthorizationCode"]],
        OptText,
        "the code the component exchanges for the authorizer's tokens (api_query_auth)",
    ),
    field(
        "authorization_code_expired_time",
        &[&["AuthorizationCodeExpiredTime"]],
        OptInt,
        "when the code expires (Unix seconds)",
    ),
    field(
        "pre_auth_code",
        &[&["PreAuthCode"]],
        OptText,
        "the pre-authorization code the authorization used",
    ),
];

/// Every known type. A type not here goes to `{prefix}.event.other`, `{prefix}.message.other`
/// or `{prefix}.component.other`.
pub const TYPES: &[TypeSpec] = &[
    event(
        "subscribe",
        "a user follows the account, plainly or through a QR code with a scene value",
        &QR,
    ),
    event("unsubscribe", "a user unfollows the account", &[]),
    event("scan", "a follower scans a QR code with a scene value", &QR),
    event(
        "location",
        "a follower's location report",
        &[
            field(
                "latitude",
                &[&["Latitude"]],
                Number { max: 90.0 },
                "latitude",
            ),
            field(
                "longitude",
                &[&["Longitude"]],
                Number { max: 180.0 },
                "longitude",
            ),
            field(
                "precision",
                &[&["Precision"]],
                Number { max: f64::MAX },
                "precision",
            ),
        ],
    ),
    event("click", "a menu tap on a `click` button", &[MENU_KEY]),
    event(
        "view",
        "a menu tap that opens a URL",
        &[
            field("url", &[&["EventKey"]], Text, "the URL opened (EventKey)"),
            field(
                "menu_id",
                &[&["MenuId"]],
                OptText,
                "the menu's id (personalized menus)",
            ),
        ],
    ),
    event(
        "view_miniprogram",
        "a menu tap that opens a mini program",
        &[
            field(
                "pagepath",
                &[&["EventKey"]],
                Text,
                "the mini-program page opened (EventKey)",
            ),
            field("menu_id", &[&["MenuId"]], OptText, "the menu's id"),
        ],
    ),
    event("scancode_push", "a menu tap that scans a code", &SCAN_CODE),
    event(
        "scancode_waitmsg",
        "a menu tap that scans a code and waits for a reply",
        &SCAN_CODE,
    ),
    event("pic_sysphoto", "a menu tap that takes a photo", &PICS),
    event(
        "pic_photo_or_album",
        "a menu tap that sends a photo or an album picture",
        &PICS,
    ),
    event(
        "pic_weixin",
        "a menu tap that sends a picture from the WeChat album",
        &PICS,
    ),
    event(
        "location_select",
        "a menu tap that sends a location",
        &[
            MENU_KEY,
            field(
                "latitude",
                &[&["SendLocationInfo", "Location_X"]],
                OptNumber,
                "latitude (Location_X)",
            ),
            field(
                "longitude",
                &[&["SendLocationInfo", "Location_Y"]],
                OptNumber,
                "longitude (Location_Y)",
            ),
            field(
                "scale",
                &[&["SendLocationInfo", "Scale"]],
                OptNumber,
                "map zoom",
            ),
            field(
                "label",
                &[&["SendLocationInfo", "Label"]],
                OptText,
                "address",
            ),
            field(
                "poiname",
                &[&["SendLocationInfo", "Poiname"]],
                OptText,
                "point of interest",
            ),
        ],
    ),
    event(
        "templatesendjobfinish",
        "a template message's delivery report",
        &[JOB_ID, STATUS],
    ),
    event(
        "masssendjobfinish",
        "a mass send's delivery report",
        &[
            JOB_ID,
            STATUS,
            field("total_count", &[&["TotalCount"]], OptInt, "fans targeted"),
            field(
                "filter_count",
                &[&["FilterCount"]],
                OptInt,
                "fans after filtering",
            ),
            field("sent_count", &[&["SentCount"]], OptInt, "sent successfully"),
            field("error_count", &[&["ErrorCount"]], OptInt, "failed"),
        ],
    ),
    event(
        "subscribe_msg_popup_event",
        "a user answers a subscription-message prompt",
        &subscriptions(
            &[&["SubscribeMsgPopupEvent", "List"]],
            &[
                TEMPLATE_ID,
                SUBSCRIBE_STATUS,
                field(
                    "popup_scene",
                    &[&["PopupScene"]],
                    OptText,
                    "where the prompt was shown",
                ),
            ],
        ),
    ),
    event(
        "subscribe_msg_change_event",
        "a user changes a subscription-message setting",
        &subscriptions(
            &[&["SubscribeMsgChangeEvent", "List"]],
            &[TEMPLATE_ID, SUBSCRIBE_STATUS],
        ),
    ),
    event(
        "subscribe_msg_sent_event",
        "a subscription message's delivery report",
        &subscriptions(
            &[&["SubscribeMsgSentEvent", "List"]],
            &[
                TEMPLATE_ID,
                field("msg_id", &[&["MsgID"]], OptText, "the message's id"),
                field("error_code", &[&["ErrorCode"]], OptText, "0 on success"),
                field(
                    "error_status",
                    &[&["ErrorStatus"]],
                    OptText,
                    "e.g. `success`",
                ),
            ],
        ),
    ),
    event(
        "user_info_modified",
        "a user changed or revoked their profile authorization",
        &[
            field(
                "target_appid",
                &[&["AppID"]],
                OptText,
                "the AppID concerned (`AppID`)",
            ),
            field(
                "revoke_info",
                &[&["RevokeInfo"]],
                OptText,
                "what was revoked",
            ),
        ],
    ),
    event(
        "kf_create_session",
        "a customer-service session starts",
        &KF,
    ),
    event("kf_close_session", "a customer-service session ends", &KF),
    event(
        "kf_switch_session",
        "a customer-service session moves to another agent",
        &[
            field(
                "from_kf_account",
                &[&["FromKfAccount"]],
                OptText,
                "previous agent",
            ),
            field("to_kf_account", &[&["ToKfAccount"]], OptText, "new agent"),
        ],
    ),
    event(
        "qualification_verify_success",
        "qualification verification succeeded",
        &EXPIRED,
    ),
    event(
        "qualification_verify_fail",
        "qualification verification failed",
        &FAILED,
    ),
    event(
        "naming_verify_success",
        "name verification succeeded",
        &EXPIRED,
    ),
    event("naming_verify_fail", "name verification failed", &FAILED),
    event("annual_renew", "the annual review is due", &EXPIRED),
    event("verify_expired", "the verification expired", &EXPIRED),
    event(
        "merchant_order",
        "a WeChat Store order",
        &[
            field("order_id", &[&["OrderId"]], OptText, "order id"),
            field("order_status", &[&["OrderStatus"]], OptInt, "order status"),
            field("product_id", &[&["ProductId"]], OptText, "product id"),
            field("sku_info", &[&["SkuInfo"]], OptText, "SKU"),
        ],
    ),
    event(
        "wificonnected",
        "a user connected to the account's Wi-Fi",
        &[
            field(
                "connect_time",
                &[&["ConnectTime"]],
                OptInt,
                "when (Unix seconds)",
            ),
            field(
                "expire_time",
                &[&["ExpireTime"]],
                OptInt,
                "expiry (Unix seconds)",
            ),
            field("vendor_id", &[&["VendorId"]], OptText, "vendor"),
            field("place_id", &[&["PlaceId"]], OptText, "shop"),
            field("device_no", &[&["DeviceNo"]], OptText, "device"),
        ],
    ),
    event(
        "shakearoundusershake",
        "a user shook near the account's beacons (beacons in `extra`)",
        &[],
    ),
    event(
        "submit_invoice_title",
        "a user submitted invoice details (in `extra`)",
        &[],
    ),
    event(
        "update_invoice_status",
        "an invoice's status changed",
        &[
            field("status", &[&["Status"]], OptText, "new status"),
            field("card_id", &[&["CardId"]], OptText, "invoice card id"),
            field("code", &[&["Code"]], OptText, "invoice code"),
        ],
    ),
    event(
        "user_authorize_invoice",
        "a user authorized invoicing",
        &[
            field(
                "succ_order_id",
                &[&["SuccOrderId"]],
                OptText,
                "authorized order",
            ),
            field(
                "fail_order_id",
                &[&["FailOrderId"]],
                OptText,
                "failed order",
            ),
            field(
                "target_appid",
                &[&["AppId"]],
                OptText,
                "the AppID concerned (`AppId`)",
            ),
            field("source", &[&["Source"]], OptText, "where"),
        ],
    ),
    message(
        "text",
        "a text message",
        &[field("content", &[&["Content"]], Text, "the text"), MSG_ID],
    ),
    message(
        "image",
        "a picture",
        &[
            field("pic_url", &[&["PicUrl"]], OptText, "picture URL"),
            MEDIA[0],
            MSG_ID,
        ],
    ),
    message(
        "voice",
        "a voice message",
        &[
            MEDIA[0],
            field(
                "format",
                &[&["Format"]],
                OptText,
                "audio format, e.g. `amr`",
            ),
            field(
                "recognition",
                &[&["Recognition"]],
                OptText,
                "speech recognition result, when enabled",
            ),
            MSG_ID,
        ],
    ),
    message("video", "a video", &[MEDIA[0], MEDIA[1], MSG_ID]),
    message("shortvideo", "a short video", &[MEDIA[0], MEDIA[1], MSG_ID]),
    message(
        "location",
        "a location message",
        &[
            field(
                "latitude",
                &[&["Location_X"]],
                Number { max: 90.0 },
                "latitude (Location_X)",
            ),
            field(
                "longitude",
                &[&["Location_Y"]],
                Number { max: 180.0 },
                "longitude (Location_Y)",
            ),
            field("scale", &[&["Scale"]], OptNumber, "map zoom"),
            field("label", &[&["Label"]], OptText, "address"),
            MSG_ID,
        ],
    ),
    message(
        "link",
        "a link",
        &[
            field("title", &[&["Title"]], OptText, "title"),
            field("description", &[&["Description"]], OptText, "description"),
            field("url", &[&["Url"]], OptText, "URL"),
            MSG_ID,
        ],
    ),
    // Open Platform: the authorization events a component receives (`InfoType`).
    component(
        "component_verify_ticket",
        "WeChat's ticket for the component, every 10 minutes; a credential: with the AppSecret it gets the component token",
        &[field(
            "ticket",
            &[&["ComponentVerifyTicket"]],
            Text,
            "the ticket (ComponentVerifyTicket)",
        )],
    ),
    component(
        "authorized",
        "an Official Account authorized the component",
        &AUTHORIZATION,
    ),
    component(
        "updateauthorized",
        "an authorizer changed what it authorized",
        &AUTHORIZATION,
    ),
    component(
        "unauthorized",
        "an authorizer withdrew its authorization",
        &[AUTHORIZER],
    ),
];

/// The names every record has at its top level ([`crate::Event`]'s own fields): no typed
/// field may take one, or a record would carry two values under one name.
pub const RECORD_FIELDS: [&str; 9] = [
    "id",
    "account",
    "openid",
    "appid",
    "created_at",
    "received_at",
    "kind",
    "type",
    "extra",
];

/// The spec of a (kind, lower-case type), if it is known.
pub fn spec(kind: Kind, name: &str) -> Option<&'static TypeSpec> {
    TYPES.iter().find(|t| t.kind == kind && t.name == name)
}
