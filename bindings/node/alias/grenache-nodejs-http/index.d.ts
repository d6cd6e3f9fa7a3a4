export * from 'grenache-native/http'
