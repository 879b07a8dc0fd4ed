"""Microsoft Graph connector: MSAL auth, throttling, classification, emulator."""
