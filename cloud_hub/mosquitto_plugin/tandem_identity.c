/*
 * tandem_identity: a Mosquitto 2.0 plugin that binds each MQTT session to its client certificate.
 *
 * With use_identity_as_username Mosquitto takes the username from the certificate but lets the
 * client choose any client id, so a device holding its own valid certificate could connect as
 * another device's client id and knock that device off the broker, again and again. This plugin
 * replaces use_identity_as_username: on every CONNECT (the TLS handshake has already verified the
 * certificate against the CA and the CRL) it
 *   - sets the username to the certificate's CN, so the ACL's %u patterns pin topics to it;
 *   - accepts a device's client id only if it is one of the configured prefixes followed by that
 *     CN exactly ("tandem-agent-cam-017", "tandem-ota-cam-017", ...); the hub identity may use any;
 *   - refuses anything else with "not authorised" before Mosquitto looks up the existing session,
 *     so the victim's session is never touched, and logs one WARNING line that the hub counts.
 *
 * Options (plugin_opt_*): hub_identity (the hub's CN), client_id_prefixes (comma separated).
 *
 * No Mosquitto or OpenSSL headers are needed to build it: the few declarations below mirror
 * Mosquitto 2.0's plugin API version 5 (mosquitto_broker.h, mosquitto_plugin.h) and OpenSSL's X509
 * accessors; the symbols resolve against the running broker and the libcrypto it links.
 * Build: cc -shared -fPIC -O2 -o tandem_identity.so tandem_identity.c   (cloud_hub/mqtt_plugin.py)
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* --- Mosquitto 2.0 plugin API v5 ------------------------------------------------------------ */
struct mosquitto;
typedef struct mosquitto_plugin_id_t mosquitto_plugin_id_t;
struct mosquitto_opt {
	char *key;
	char *value;
};
struct mosquitto_evt_basic_auth {
	void *future;
	struct mosquitto *client;
	char *username;
	char *password;
	void *future2[4];
};
typedef int (*MOSQ_FUNC_generic_callback)(int, void *, void *);
#define MOSQ_EVT_BASIC_AUTH 3
#define MOSQ_ERR_SUCCESS 0
#define MOSQ_ERR_NOMEM 1
#define MOSQ_ERR_INVAL 3
#define MOSQ_ERR_AUTH 11
#define MOSQ_LOG_NOTICE (1 << 1)
#define MOSQ_LOG_WARNING (1 << 2)
int mosquitto_callback_register(mosquitto_plugin_id_t *, int, MOSQ_FUNC_generic_callback, const void *, void *);
int mosquitto_callback_unregister(mosquitto_plugin_id_t *, int, MOSQ_FUNC_generic_callback, const void *);
void mosquitto_log_printf(int level, const char *fmt, ...);
const char *mosquitto_client_id(const struct mosquitto *client);
const char *mosquitto_client_address(const struct mosquitto *client);
void *mosquitto_client_certificate(const struct mosquitto *client);
int mosquitto_set_username(struct mosquitto *client, const char *username);

/* --- OpenSSL (1.1 and 3.x) ------------------------------------------------------------------- */
#define NID_commonName 13
void *X509_get_subject_name(const void *x509);
int X509_NAME_get_index_by_NID(void *name, int nid, int lastpos);
void *X509_NAME_get_entry(const void *name, int loc);
void *X509_NAME_ENTRY_get_data(const void *entry);
const unsigned char *ASN1_STRING_get0_data(const void *str);
int ASN1_STRING_length(const void *str);
void X509_free(void *x509);

#define MARK "tandem-identity:"
#define MAX_PREFIXES 8

static mosquitto_plugin_id_t *plugin_id;
static char *hub_identity;
static char *prefixes[MAX_PREFIXES];
static int prefix_count;

/* The certificate's CN as a new string, or NULL (no certificate, no CN, or a CN with a NUL in it). */
static char *certificate_cn(struct mosquitto *client)
{
	void *cert = mosquitto_client_certificate(client);
	char *cn = NULL;
	if(cert == NULL) return NULL;
	void *name = X509_get_subject_name(cert);
	int i = name ? X509_NAME_get_index_by_NID(name, NID_commonName, -1) : -1;
	void *entry = i >= 0 ? X509_NAME_get_entry(name, i) : NULL;
	void *data = entry ? X509_NAME_ENTRY_get_data(entry) : NULL;
	if(data){
		const unsigned char *bytes = ASN1_STRING_get0_data(data);
		int len = ASN1_STRING_length(data);
		if(bytes && len > 0 && (size_t)len == strlen((const char *)bytes)){
			cn = strdup((const char *)bytes);
		}
	}
	X509_free(cert);
	return cn;
}

static bool client_id_belongs_to(const char *client_id, const char *cn)
{
	size_t cn_len = strlen(cn), id_len = strlen(client_id);
	for(int i = 0; i < prefix_count; i++){
		size_t p_len = strlen(prefixes[i]);
		if(id_len == p_len + cn_len && !strncmp(client_id, prefixes[i], p_len) && !strcmp(client_id + p_len, cn)){
			return true;
		}
	}
	return false;
}

/* A copy of `s` safe to quote in a log line the hub parses: at most 128 characters, anything
 * but letters, digits and "._-:" replaced with '?' (a client id may hold quotes or newlines). */
static void printable(const char *s, char *out, size_t size)
{
	size_t n = 0;
	for(; s[n] && n + 1 < size && n < 128; n++){
		char c = s[n];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("._-:", c);
		out[n] = ok ? c : '?';
	}
	out[n] = '\0';
}

static int basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *address = mosquitto_client_address(ed->client);
	const char *client_id = mosquitto_client_id(ed->client);
	char *cn;
	int rc;
	(void)event;
	(void)userdata;

	char id_text[129], cn_text[129], address_text[129];

	if(!client_id) client_id = "";
	if(!address) address = "?";
	printable(client_id, id_text, sizeof(id_text));
	printable(address, address_text, sizeof(address_text));
	cn = certificate_cn(ed->client);
	if(cn == NULL){
		mosquitto_log_printf(MOSQ_LOG_WARNING, MARK " refused certificate CN \"\" client id \"%s\" from \"%s\": no CN",
				id_text, address_text);
		return MOSQ_ERR_AUTH;
	}
	if(strcmp(cn, hub_identity) && !client_id_belongs_to(client_id, cn)){
		printable(cn, cn_text, sizeof(cn_text));
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				MARK " refused certificate CN \"%s\" client id \"%s\" from \"%s\": a device connects only as its own client ids",
				cn_text, id_text, address_text);
		free(cn);
		return MOSQ_ERR_AUTH;
	}
	rc = mosquitto_set_username(ed->client, cn);
	free(cn);
	return rc == MOSQ_ERR_SUCCESS ? MOSQ_ERR_SUCCESS : MOSQ_ERR_AUTH;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	plugin_id = identifier;
	for(int i = 0; i < option_count; i++){
		if(!strcmp(options[i].key, "hub_identity")){
			free(hub_identity);
			hub_identity = strdup(options[i].value);
		}else if(!strcmp(options[i].key, "client_id_prefixes")){
			char *list = strdup(options[i].value), *save = NULL;
			for(char *tok = strtok_r(list, ",", &save); tok && prefix_count < MAX_PREFIXES; tok = strtok_r(NULL, ",", &save)){
				prefixes[prefix_count++] = strdup(tok);
			}
			free(list);
		}
	}
	if(hub_identity == NULL || prefix_count == 0){
		mosquitto_log_printf(MOSQ_LOG_WARNING, MARK " needs plugin_opt_hub_identity and plugin_opt_client_id_prefixes");
		return MOSQ_ERR_INVAL;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE, MARK " client ids bound to certificates (%d prefixes, hub %s)", prefix_count, hub_identity);
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, basic_auth, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, basic_auth, NULL);
	for(int i = 0; i < prefix_count; i++) free(prefixes[i]);
	prefix_count = 0;
	free(hub_identity);
	hub_identity = NULL;
	return MOSQ_ERR_SUCCESS;
}
