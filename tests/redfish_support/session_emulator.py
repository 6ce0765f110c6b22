"""sushy-emulator with a Redfish SessionService (and optionally an event stream), for osprov's
tests.

sushy-tools (2.x) authenticates with HTTP basic auth only; real BMCs (iDRAC, iLO, XCC) hand out
sessions and cap how many may be open. This runs the unchanged sushy-tools emulator (same command
line and config file) behind one more WSGI layer that adds what a BMC's SessionService does:

- the service root links `SessionService` and `Links.Sessions`;
- POST /redfish/v1/SessionService/Sessions {"UserName", "Password"} checks the account against
  the emulator's own htpasswd file and answers 201 with `X-Auth-Token` and `Location`;
- a request carrying a live `X-Auth-Token` reaches the emulator as that account; an unknown,
  deleted or expired token gets 401;
- GET of the SessionService, of the Sessions collection and of one session; DELETE of a session
  (with its token, or with basic auth, which is how a test expires a session from outside);
- config key SESSION_TIMEOUT (seconds, default 1800): a session unused that long expires;
- with config key EVENT_STREAM = True, an EventService whose `ServerSentEventUri` streams an
  `Event` (`ResourceChanged`, `OriginOfCondition` = the system) whenever a system's power state
  changes, as a BMC's event stream does. It watches the systems by reading them through the
  emulator itself every half second (those reads are not HTTP requests and not in the log).

Every request still goes through werkzeug's access log, so the tests count logins and logouts the
same way they count the emulator's own requests.
"""
import base64
import io
import json
import secrets
import sys
import threading
import time

from sushy_tools import error
from sushy_tools.emulator import auth_basic
from sushy_tools.emulator import main as emulator
from werkzeug.test import EnvironBuilder

SERVICE = '/redfish/v1/SessionService'
SESSIONS = SERVICE + '/Sessions'
EVENTS = '/redfish/v1/EventService'
SSE = EVENTS + '/SSE'
REASONS = {200: 'OK', 201: 'Created', 204: 'No Content', 401: 'Unauthorized', 404: 'Not Found'}


class SessionService:
    def __init__(self, app, auth_file, timeout, events):
        self.app = app
        self.auth_file = auth_file
        self.timeout = timeout
        self.events = events
        self.lock = threading.Lock()
        # token -> {'id', 'user', 'basic', 'used'}
        self.sessions = {}

    @staticmethod
    def answer(start_response, status, body, headers=()):
        data = json.dumps(body).encode() if body is not None else b''
        out = [('Content-Type', 'application/json'), ('Content-Length', str(len(data)))]
        out.extend(headers)
        if status == 401:
            out.append(('WWW-Authenticate', 'Basic realm="Baremetal API"'))
        start_response(f'{status} {REASONS[status]}', out)
        return [data]

    def refused(self, start_response, message):
        return self.answer(start_response, 401, {'error': {
            'code': 'Base.1.0.NoValidSession', 'message': message}})

    def live(self, token):
        """The session of a token, if it is still valid (expires idle sessions on the way)."""
        session = self.sessions.get(token)
        if session and time.time() - session['used'] > self.timeout:
            del self.sessions[token]
            session = None
        if session:
            session['used'] = time.time()
        return session

    def check_basic(self, environ):
        try:
            user, password = auth_basic.parse_token(auth_basic.parse_header(dict(environ)))
            auth_basic.authenticate(self.auth_file, user, password)
            return True
        except (error.FishyError, KeyError, ValueError):
            return False

    def root(self, environ, start_response):
        """The emulator's service root, with the SessionService linked."""
        captured = {}

        def capture(status, headers, exc_info=None):
            captured['status'], captured['headers'] = status, headers

        body = b''.join(self.app(environ, capture))
        if not captured['status'].startswith('200'):
            start_response(captured['status'], captured['headers'])
            return [body]
        doc = json.loads(body)
        doc['SessionService'] = {'@odata.id': SERVICE}
        doc.setdefault('Links', {})['Sessions'] = {'@odata.id': SESSIONS}
        if self.events:
            doc['EventService'] = {'@odata.id': EVENTS}
        data = json.dumps(doc).encode()
        headers = [(k, v) for k, v in captured['headers'] if k.lower() != 'content-length']
        headers.append(('Content-Length', str(len(data))))
        start_response(captured['status'], headers)
        return [data]

    def login(self, environ, start_response):
        try:
            size = int(environ.get('CONTENT_LENGTH') or 0)
            body = json.loads(environ['wsgi.input'].read(size) or b'{}')
            user, password = str(body['UserName']), str(body['Password'])
            auth_basic.authenticate(self.auth_file, user, password.encode())
        except (error.FishyError, KeyError, ValueError, TypeError):
            return self.refused(start_response, 'invalid credentials')
        sid, token = secrets.token_hex(8), secrets.token_hex(16)
        basic = 'Basic ' + base64.b64encode(f'{user}:{password}'.encode()).decode()
        self.sessions[token] = {'id': sid, 'user': user, 'basic': basic, 'used': time.time()}
        location = f'{SESSIONS}/{sid}'
        return self.answer(start_response, 201,
                           {'@odata.id': location, 'Id': sid, 'UserName': user},
                           [('X-Auth-Token', token), ('Location', location)])

    def service(self, environ, start_response, path, method, token_ok):
        if not (token_ok or self.check_basic(environ)):
            return self.refused(start_response, 'authorization required')
        live = {t: s for t in list(self.sessions) if (s := self.live(t))}
        if path == SERVICE:
            return self.answer(start_response, 200, {
                '@odata.id': SERVICE, 'Id': 'SessionService', 'ServiceEnabled': True,
                'SessionTimeout': self.timeout, 'Sessions': {'@odata.id': SESSIONS}})
        if path == SESSIONS:
            return self.answer(start_response, 200, {
                '@odata.id': SESSIONS, 'Members@odata.count': len(live),
                'Members': [{'@odata.id': f"{SESSIONS}/{s['id']}"} for s in live.values()]})
        sid = path.rsplit('/', 1)[-1]
        hits = [t for t, s in live.items() if s['id'] == sid]
        if not hits:
            return self.answer(start_response, 404, {'error': {
                'code': 'Base.1.0.ResourceMissingAtURI', 'message': sid}})
        if method == 'DELETE':
            del self.sessions[hits[0]]
            return self.answer(start_response, 204, None)
        session = live[hits[0]]
        return self.answer(start_response, 200,
                           {'@odata.id': path, 'Id': sid, 'UserName': session['user']})

    def read(self, path, authorization):
        """GET a resource from the emulator itself, as JSON."""
        env = EnvironBuilder(path=path, headers={'Authorization': authorization},
                             base_url='https://127.0.0.1/').get_environ()
        env['wsgi.input'] = io.BytesIO(b'')
        captured = {}

        def capture(status, headers, exc_info=None):
            captured['status'] = status

        body = b''.join(self.app(env, capture))
        return json.loads(body) if captured['status'].startswith('200') else {}

    def power_states(self, authorization):
        systems = self.read('/redfish/v1/Systems', authorization).get('Members', [])
        return {m['@odata.id']: self.read(m['@odata.id'], authorization).get('PowerState')
                for m in systems}

    def event_service(self, environ, start_response, path, token_ok):
        if not (token_ok or self.check_basic(environ)):
            return self.refused(start_response, 'authorization required')
        if path == EVENTS:
            return self.answer(start_response, 200, {
                '@odata.id': EVENTS, 'Id': 'EventService', 'ServiceEnabled': True,
                'ServerSentEventUri': SSE})
        if path != SSE:
            return self.answer(start_response, 404, {'error': {
                'code': 'Base.1.0.ResourceMissingAtURI', 'message': path}})
        authorization = environ['HTTP_AUTHORIZATION']

        def stream():
            last = self.power_states(authorization)
            yield b': osprov test event source\n\n'
            number = 0
            while True:
                time.sleep(0.5)
                now = self.power_states(authorization)
                for system, power in now.items():
                    if system in last and last[system] != power:
                        number += 1
                        event = {'@odata.type': '#Event.v1_7_0.Event', 'Id': str(number),
                                 'Name': 'Event', 'Events': [{
                                     'EventType': 'ResourceChanged',
                                     'MessageId': 'ResourceEvent.1.0.ResourceChanged',
                                     'Message': f'PowerState is {power}',
                                     'OriginOfCondition': {'@odata.id': system}}]}
                        yield f'id: {number}\ndata: {json.dumps(event)}\n\n'.encode()
                last = now

        start_response('200 OK', [('Content-Type', 'text/event-stream'),
                                  ('Cache-Control', 'no-cache')])
        return stream()

    def __call__(self, environ, start_response):
        path = environ.get('PATH_INFO', '').rstrip('/')
        method = environ['REQUEST_METHOD']
        with self.lock:
            token = environ.get('HTTP_X_AUTH_TOKEN')
            token_ok = False
            if token:
                session = self.live(token)
                if not session:
                    return self.refused(start_response, 'the session expired or does not exist')
                environ['HTTP_AUTHORIZATION'] = session['basic']
                token_ok = True
            if path == SESSIONS and method == 'POST':
                return self.login(environ, start_response)
            if path == SERVICE or path.startswith(SERVICE + '/'):
                return self.service(environ, start_response, path, method, token_ok)
            if self.events and (path == EVENTS or path.startswith(EVENTS + '/')):
                return self.event_service(environ, start_response, path, token_ok)
        if path == '/redfish/v1' and method == 'GET':
            return self.root(environ, start_response)
        return self.app(environ, start_response)


_run = emulator.app.run


def run_with_sessions(*args, **kwargs):
    app = emulator.app
    app.wsgi_app = SessionService(app.wsgi_app, app.config['SUSHY_EMULATOR_AUTH_FILE'],
                                  float(app.config.get('SESSION_TIMEOUT', 1800)),
                                  bool(app.config.get('EVENT_STREAM', False)))
    return _run(*args, **kwargs)


emulator.app.run = run_with_sessions

if __name__ == '__main__':
    sys.argv[0] = 'sushy-emulator'
    sys.exit(emulator.main())
